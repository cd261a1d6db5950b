//! A backend instance added by an admin through the API (settings.toml holds the rest).
use sea_orm::entity::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum Kind {
    #[sea_orm(string_value = "image")]
    Image,
    #[sea_orm(string_value = "speech")]
    Speech,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum Protocol {
    #[sea_orm(string_value = "qwen")]
    Qwen,
    #[sea_orm(string_value = "fastwhisper")]
    Fastwhisper,
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "instances")]
pub struct Model {
    /// Also the instance's id in the API, so it stays the same across restarts.
    #[sea_orm(primary_key)]
    pub id: i64,
    pub kind: Kind,
    /// Normalised (see `settings::url_key`); unique per kind.
    pub url: String,
    pub protocol: Protocol,
    pub capacity: i32,
    pub weight: i32,
    pub enabled: bool,
    /// Bumped by every change, so the registry can apply concurrent changes in commit order.
    pub revision: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
