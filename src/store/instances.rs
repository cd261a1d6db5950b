//! Rows of the backend instances admins add through the API. Only the InstanceRegistry
//! writes them (startup reads them once), so the running set and the rows change in step.

use chrono::Utc;
use entity::instance;
use entity::prelude::Instance;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, Set,
    TransactionTrait,
};

use super::StoreError;
use crate::domain::{url_key, InstanceChange, InstanceSpec};

/// Every API instance, oldest first.
pub async fn load(db: &DatabaseConnection) -> Result<Vec<instance::Model>, StoreError> {
    Ok(Instance::find()
        .order_by_asc(instance::Column::Id)
        .all(db)
        .await?)
}

/// A new enabled instance; `StoreError::Constraint` when the same kind and url exists.
pub async fn insert(
    db: &DatabaseConnection,
    spec: &InstanceSpec,
) -> Result<instance::Model, StoreError> {
    let now = Utc::now();
    let row = instance::ActiveModel {
        kind: Set(spec.kind),
        url: Set(url_key(&spec.url)),
        protocol: Set(spec.protocol()),
        model: Set(spec.model.clone()),
        capacity: Set(spec.capacity as i32),
        weight: Set(spec.weight as i32),
        enabled: Set(true),
        revision: Set(0),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    };
    Ok(row.insert(db).await?)
}

/// Applies the change and bumps the revision; `None` when there is no such row.
pub async fn update(
    db: &DatabaseConnection,
    id: i64,
    change: &InstanceChange,
) -> Result<Option<instance::Model>, StoreError> {
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

pub async fn delete(db: &DatabaseConnection, id: i64) -> Result<(), StoreError> {
    Instance::delete_by_id(id).exec(db).await?;
    Ok(())
}

/// The instance a row describes.
pub fn spec_of(row: &instance::Model) -> InstanceSpec {
    InstanceSpec {
        kind: row.kind,
        url: row.url.clone(),
        protocol: Some(row.protocol),
        model: row.model.clone(),
        capacity: row.capacity as u32,
        weight: row.weight as u32,
    }
}
