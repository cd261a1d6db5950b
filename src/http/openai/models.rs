//! `GET /v1/models`: what the pool can serve. One id per kind with an enabled instance
//! (`infergate-image`, `infergate-speech`), which any request may name, and the models
//! the openai instances are configured with, for operators to see behind the gateway.
//! Ids follow the settings, not the instances' health, so they stay put.

use std::collections::BTreeSet;

use actix::Addr;
use actix_web::{web, HttpResponse};
use serde::Serialize;

use crate::actors::messages::{InstanceState, ListInstances};
use crate::actors::InstanceRegistry;
use crate::domain::InstanceKind;
use crate::error::{ApiError, OpenAiErrorBody};
use crate::http::ask;
use crate::http::caller::DeviceOrUser;

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/models", web::get().to(list_models));
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ModelList {
    #[schema(example = "list")]
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ModelObject {
    #[schema(example = "infergate-image")]
    pub id: String,
    #[schema(example = "model")]
    pub object: &'static str,
    /// Always 0: the gateway does not know when a backend's model was made.
    pub created: i64,
    #[schema(example = "infergate")]
    pub owned_by: &'static str,
}

/// The id a kind is served under.
fn kind_id(kind: InstanceKind) -> &'static str {
    match kind {
        InstanceKind::Image => "infergate-image",
        InstanceKind::Speech => "infergate-speech",
    }
}

/// The models the enabled instances serve.
#[utoipa::path(get, path = "/v1/models", tag = "openai",
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "One id per kind with an enabled instance, then the openai instances' models", body = ModelList),
        (status = 401, description = "Missing or bad key or token", body = OpenAiErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
pub async fn list_models(
    caller: DeviceOrUser,
    registry: web::Data<Addr<InstanceRegistry>>,
) -> Result<HttpResponse, ApiError> {
    let instances = ask(&registry, ListInstances).await?;
    let serving: Vec<_> = instances
        .iter()
        .filter(|i| !matches!(i.state, InstanceState::Disabled | InstanceState::Draining))
        .collect();
    let kinds: BTreeSet<&str> = serving.iter().map(|i| kind_id(i.kind)).collect();
    let models: BTreeSet<&str> = serving.iter().filter_map(|i| i.model.as_deref()).collect();
    let mut ids: Vec<&str> = kinds.into_iter().collect();
    for model in models {
        if !ids.contains(&model) {
            ids.push(model);
        }
    }
    let data = ids
        .into_iter()
        .map(|id| ModelObject {
            id: id.to_string(),
            object: "model",
            created: 0,
            owned_by: "infergate",
        })
        .collect();
    Ok(HttpResponse::Ok().json(ModelList {
        object: "list",
        data,
    }))
}
