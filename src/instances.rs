//! Rows of the backend instances admins add through the API. Only the InstanceRegistry
//! writes them (startup reads them once), so the running set and the rows change in step.

use chrono::Utc;
use entity::instance::{self, Kind};
use entity::prelude::Instance;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    Set, TransactionTrait,
};

use crate::domain::InstanceChange;
use crate::settings::{url_key, InstanceKind, InstanceSettings, Protocol};

/// Every API instance, oldest first.
pub async fn load(db: &DatabaseConnection) -> Result<Vec<instance::Model>, DbErr> {
    Instance::find()
        .order_by_asc(instance::Column::Id)
        .all(db)
        .await
}

/// A new enabled instance; a unique violation means the same kind and url exists.
pub async fn insert(
    db: &DatabaseConnection,
    config: &InstanceSettings,
) -> Result<instance::Model, DbErr> {
    let now = Utc::now();
    instance::ActiveModel {
        kind: Set(match config.kind {
            InstanceKind::Image => Kind::Image,
            InstanceKind::Speech => Kind::Speech,
        }),
        url: Set(url_key(&config.url)),
        protocol: Set(match config.protocol() {
            Protocol::Qwen => instance::Protocol::Qwen,
            Protocol::Fastwhisper => instance::Protocol::Fastwhisper,
        }),
        capacity: Set(config.capacity as i32),
        weight: Set(config.weight as i32),
        enabled: Set(true),
        revision: Set(0),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(db)
    .await
}

/// Applies the change and bumps the revision; `None` when there is no such row.
pub async fn update(
    db: &DatabaseConnection,
    id: i64,
    change: &InstanceChange,
) -> Result<Option<instance::Model>, DbErr> {
    let mut update = Instance::update_many()
        .col_expr(
            instance::Column::Revision,
            Expr::col(instance::Column::Revision).add(1),
        )
        .col_expr(instance::Column::UpdatedAt, Utc::now().into())
        .filter(instance::Column::Id.eq(id));
    if let Some(capacity) = change.capacity {
        update = update.col_expr(instance::Column::Capacity, (capacity as i32).into());
    }
    if let Some(weight) = change.weight {
        update = update.col_expr(instance::Column::Weight, (weight as i32).into());
    }
    if let Some(enabled) = change.enabled {
        update = update.col_expr(instance::Column::Enabled, enabled.into());
    }
    // Read back in the same transaction: the revision read is the one this change wrote.
    let txn = db.begin().await?;
    if update.exec(&txn).await?.rows_affected == 0 {
        return Ok(None);
    }
    let row = Instance::find_by_id(id).one(&txn).await?;
    txn.commit().await?;
    Ok(row)
}

pub async fn delete(db: &DatabaseConnection, id: i64) -> Result<(), DbErr> {
    Instance::delete_by_id(id).exec(db).await.map(|_| ())
}

/// The instance a row describes.
pub fn config_of(row: &instance::Model) -> InstanceSettings {
    InstanceSettings {
        kind: match row.kind {
            Kind::Image => InstanceKind::Image,
            Kind::Speech => InstanceKind::Speech,
        },
        url: row.url.clone(),
        protocol: Some(match row.protocol {
            instance::Protocol::Qwen => Protocol::Qwen,
            instance::Protocol::Fastwhisper => Protocol::Fastwhisper,
        }),
        capacity: row.capacity as u32,
        weight: row.weight as u32,
    }
}
