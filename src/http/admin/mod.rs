//! The admin API under `/api/v1/admin/` (admins only: `AdminUser`, the role checked in
//! the database): backend instances here (list, add, change, drain and remove while the
//! gateway runs) and the nodes; tasks, users, the queue's pause and the audit log in
//! their own files. Every change is written to the audit log.

pub mod audit;
pub mod queue;
pub mod tasks;
pub mod users;

use actix::Addr;
use actix_web::middleware::from_fn;
use actix_web::{web, HttpResponse};

use crate::actors::messages::ListNodes;
use crate::actors::messages::{
    AddInstance, InstanceView, ListInstances, RemoveInstance, UpdateInstance,
};
use crate::actors::{Dispatcher, InstanceRegistry};
use crate::domain::{
    InstanceChange, InstanceChangeRequest, InstanceId, InstanceSpec, NewInstanceRequest,
};
use crate::error::{ApiError, ErrorBody};
use crate::http::ask;
use crate::http::caller::{require_admin, AdminUser};
use audit::record;
use sea_orm::DatabaseConnection;

/// Every admin route lives in this one scope, behind `require_admin`: the role is checked
/// before any extractor runs.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let scope = web::scope("/api/v1/admin")
        .wrap(from_fn(require_admin))
        .route("/instances", web::get().to(list_instances))
        .route("/instances", web::post().to(add_instance))
        .route("/instances/{id}", web::patch().to(update_instance))
        .route("/instances/{id}", web::delete().to(remove_instance))
        .route("/nodes", web::get().to(list_nodes))
        .configure(tasks::configure)
        .configure(users::configure)
        .configure(queue::configure)
        .configure(audit::configure);
    cfg.service(scope);
}

/// A gateway process, as `/api/v1/admin/nodes` shows it.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct NodeView {
    /// `local` for a gateway alone on its SQLite file.
    pub id: String,
    pub host: String,
    pub pid: i32,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub last_heartbeat: chrono::DateTime<chrono::Utc>,
    /// Tasks it held at its last heartbeat.
    pub running: i32,
}

/// The live gateway processes: with several on PostgreSQL, those whose heartbeat is
/// within a lease; alone on SQLite, this one.
#[utoipa::path(get, path = "/api/v1/admin/nodes", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The live gateways", body = [NodeView]),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(admin_id = %admin.0.id))]
pub async fn list_nodes(
    admin: AdminUser,
    dispatcher: web::Data<Addr<Dispatcher>>,
) -> Result<HttpResponse, ApiError> {
    let nodes: Vec<NodeView> = ask(&dispatcher, ListNodes)
        .await??
        .into_iter()
        .map(|node| NodeView {
            id: node.id,
            host: node.host,
            pid: node.pid,
            started_at: node.started_at,
            last_heartbeat: node.heartbeat_at,
            running: node.running,
        })
        .collect();
    Ok(HttpResponse::Ok().json(nodes))
}

/// Every instance: settings.toml's and the API's, with health and figures.
#[utoipa::path(get, path = "/api/v1/admin/instances", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every instance", body = [InstanceView]),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(admin_id = %admin.0.id))]
pub async fn list_instances(
    admin: AdminUser,
    registry: web::Data<Addr<InstanceRegistry>>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(ask(&registry, ListInstances).await?))
}

/// Add an instance; it is kept in the database and takes work once its first ping succeeds.
#[utoipa::path(post, path = "/api/v1/admin/instances", tag = "admin",
    request_body = NewInstanceRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Added; `unhealthy` until its first ping succeeds", body = InstanceView),
        (status = 400, description = "Invalid kind, url, protocol, capacity or weight, or an unknown field", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 409, description = "An instance of this kind and url exists (from settings.toml or the API), or is still draining", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 503, description = "The database is unavailable (nothing was added)", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(admin_id = %admin.0.id, instance_id))]
pub async fn add_instance(
    admin: AdminUser,
    db: web::Data<DatabaseConnection>,
    registry: web::Data<Addr<InstanceRegistry>>,
    body: web::Json<NewInstanceRequest>,
) -> Result<HttpResponse, ApiError> {
    let spec = InstanceSpec::try_from(body.into_inner())?;
    let added = ask(&registry, AddInstance(spec)).await??;
    tracing::Span::current().record("instance_id", added.id.0);
    tracing::info!(url = %added.url, "instance added by an admin");
    let what =
        serde_json::json!({"kind": added.kind, "url": added.url, "capacity": added.capacity});
    let target = Some(added.id.to_string());
    record(
        &db,
        &admin,
        "instance.add",
        target,
        Some(what.to_string()),
        None,
    )
    .await;
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/api/v1/admin/instances/{}", added.id)))
        .json(added))
}

/// Change an instance's capacity, weight or enabled. Changes to an instance from
/// settings.toml last until the next start.
#[utoipa::path(patch, path = "/api/v1/admin/instances/{id}", tag = "admin",
    request_body = InstanceChangeRequest,
    params(("id" = u64, Path, description = "Instance id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Changed", body = InstanceView),
        (status = 400, description = "Nothing to change, a value out of range, or an unknown field", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 409, description = "The instance is draining", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 503, description = "The database is unavailable (nothing was changed)", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(admin_id = %admin.0.id, instance_id = *id))]
pub async fn update_instance(
    admin: AdminUser,
    db: web::Data<DatabaseConnection>,
    registry: web::Data<Addr<InstanceRegistry>>,
    id: web::Path<u64>,
    body: web::Json<InstanceChangeRequest>,
) -> Result<HttpResponse, ApiError> {
    let request = body.into_inner();
    let asked = serde_json::to_string(&request).ok();
    let change = InstanceChange::try_from(request)?;
    tracing::info!(?change, "instance changed by an admin");
    let id = InstanceId(id.into_inner());
    let updated = ask(&registry, UpdateInstance { id, change }).await??;
    record(
        &db,
        &admin,
        "instance.update",
        Some(id.to_string()),
        asked,
        None,
    )
    .await;
    Ok(HttpResponse::Ok().json(updated))
}

/// Drain an instance, then remove it: no new work, calls in flight finish, then it is
/// gone. An API instance's row is deleted at once; one from settings.toml comes back at
/// the next start.
#[utoipa::path(delete, path = "/api/v1/admin/instances/{id}", tag = "admin",
    params(("id" = u64, Path, description = "Instance id")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Draining (already gone if nothing was in flight)", body = InstanceView),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 503, description = "The database is unavailable (nothing was removed)", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(admin_id = %admin.0.id, instance_id = *id))]
pub async fn remove_instance(
    admin: AdminUser,
    db: web::Data<DatabaseConnection>,
    registry: web::Data<Addr<InstanceRegistry>>,
    id: web::Path<u64>,
) -> Result<HttpResponse, ApiError> {
    let removed = ask(&registry, RemoveInstance(InstanceId(id.into_inner()))).await??;
    tracing::info!(url = %removed.url, in_flight = removed.in_flight, "instance removal requested by an admin");
    let what = serde_json::json!({"url": removed.url}).to_string();
    record(
        &db,
        &admin,
        "instance.remove",
        Some(removed.id.to_string()),
        Some(what),
        None,
    )
    .await;
    Ok(HttpResponse::Accepted().json(removed))
}

/// The most entries one page of an admin listing holds.
const MAX_PAGE: u64 = 1000;

/// A listing's page size (`default` when not asked), checked with its cursor: `limit`
/// 1 to `MAX_PAGE`, `from` 0 or more.
fn page_limit(limit: Option<u64>, from: Option<i64>, default: u64) -> Result<u64, ApiError> {
    let limit = limit.unwrap_or(default);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::Validation(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    if from.is_some_and(|from| from < 0) {
        return Err(ApiError::Validation("from must be 0 or more".into()));
    }
    Ok(limit)
}
