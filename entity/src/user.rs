use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// What a user may do: `vip` tasks are served first, `admin` reaches /api/v1/admin/.
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
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[sea_orm(string_value = "user")]
    User,
    #[sea_orm(string_value = "vip")]
    Vip,
    #[sea_orm(string_value = "admin")]
    Admin,
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// As the user spelt it; unique whatever its case (an index on `lower(username)`).
    #[sea_orm(unique)]
    pub username: String,
    /// argon2id PHC string; never leaves the server.
    pub password_hash: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub role: Role,
    /// Set by an operator: the user's tokens and keys are refused, and so are logins.
    pub disabled: bool,
    pub created_at: DateTimeUtc,
    /// The number of the user's last task event (events are numbered per user).
    pub event_seq: i64,
    /// Signs the user's webhook deliveries (`whsec_…`); shown once, when created.
    pub webhook_secret: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl std::fmt::Display for Role {
    /// The wire form, as the API and the command line spell it: user, vip, admin.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_value())
    }
}
