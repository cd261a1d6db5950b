//! A backend instance added by an admin through the API (settings.toml holds the rest),
//! and the vocabulary every instance is described in: its kind and its protocol. These
//! two enums are the gateway's own, stored as they are and re-exported by its domain.
use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// What an instance serves.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    EnumIter,
    DeriveActiveEnum,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum InstanceKind {
    #[sea_orm(string_value = "image")]
    Image,
    #[sea_orm(string_value = "speech")]
    Speech,
}

/// The wire protocol an instance speaks.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    EnumIter,
    DeriveActiveEnum,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum Protocol {
    #[sea_orm(string_value = "qwen")]
    Qwen,
    #[sea_orm(string_value = "fastwhisper")]
    Fastwhisper,
    /// OpenAI-compatible servers: images or transcriptions, by the instance's kind.
    #[sea_orm(string_value = "openai")]
    Openai,
    /// AUTOMATIC1111's web UI API (and Forge, stable-diffusion.cpp's server): images.
    #[sea_orm(string_value = "a1111")]
    A1111,
}

impl TryFrom<String> for InstanceKind {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, String> {
        crate::from_wire(raw)
    }
}

impl TryFrom<String> for Protocol {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, String> {
        crate::from_wire(raw)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "instances")]
pub struct Model {
    /// Also the instance's id in the API, so it stays the same across restarts.
    #[sea_orm(primary_key)]
    pub id: i64,
    pub kind: InstanceKind,
    /// Normalised (see `domain::url_key`); unique per kind.
    pub url: String,
    pub protocol: Protocol,
    /// The model an openai instance is asked for; `None`: the kind's default.
    pub model: Option<String>,
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
