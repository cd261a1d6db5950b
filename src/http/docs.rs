//! The OpenAPI document (`/api-docs/openapi.json`), generated from the handlers with the
//! running server's limits filled in, and Swagger UI at `/docs`. `.ci/schemathesis` checks
//! that the server answers what the document says.

use std::sync::LazyLock;

use actix_web::dev::ResourceDef;
use actix_web::{web, HttpResponse};
use utoipa::openapi::schema::{AdditionalProperties, Schema};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::RefOr;
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::settings::Settings;

use super::{
    accounts, admin, events, image, keys, metrics, openai, speech, system, tasks, webhooks, ws,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "infergate", description = "Asynchronous task gateway for GPU inference backends."),
    paths(
        accounts::register, accounts::login,
        image::submit, image::get_image,
        tasks::get_tasks, tasks::cancel_task, tasks::delete_task,
        events::user_events, events::task_events, events::ticket, ws::connect,
        webhooks::rotate_secret,
        speech::transcribe, speech::pcm,
        keys::create_key, keys::list_keys, keys::delete_key,
        system::health, system::ready, system::stats, metrics::metrics,
        admin::list_instances, admin::add_instance, admin::update_instance, admin::remove_instance,
        admin::list_nodes,
        admin::tasks::list_tasks, admin::tasks::get_task, admin::tasks::cancel_tasks,
        admin::tasks::retry_tasks, admin::tasks::delete_tasks, admin::tasks::get_image,
        admin::users::list_users, admin::users::update_user,
        admin::queue::pause, admin::queue::resume, admin::queue::history, admin::audit::list_audit,
        openai::images::generations, openai::transcriptions::transcriptions, openai::models::list_models,
    ),
    components(schemas(crate::error::ErrorBody, crate::error::OpenAiErrorBody)),
    modifiers(&SecuritySchemes, &Shapes),
    tags(
        (name = "accounts", description = "Registration and login"),
        (name = "image", description = "Asynchronous text-to-image"),
        (name = "tasks", description = "Task status"),
        (name = "events", description = "Task events pushed as Server-Sent Events, with replay (JWT, device API key, or a single-use ticket)"),
        (name = "webhooks", description = "Signed deliveries of a task's events to its webhook_url (Standard Webhooks)"),
        (name = "speech", description = "Synchronous speech to text (JWT or device API key)"),
        (name = "keys", description = "Device API keys"),
        (name = "system", description = "Health, readiness, queue figures and Prometheus metrics"),
        (name = "admin", description = "Backend instances, every task, users, the queue's pause and the audit log (admin role)"),
        (name = "openai", description = "OpenAI-compatible routes under /v1 (device API key or JWT as Bearer; errors in OpenAI's shape)"),
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        // `telemetry.metrics_token`, when set.
        components.add_security_scheme(
            "metrics_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        // Devices: the speech, image download and /v1 endpoints also take
        // `Authorization: Bearer igk_…`.
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new(
                crate::auth::API_KEY_HEADER,
            ))),
        );
    }
}

/// What attributes cannot say: a form takes no fields but `file` in the document (the
/// server skips others, but not every name a client can make up parses), and a change
/// names at least one field.
struct Shapes;

impl Modify for Shapes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(form) = object(openapi, "TranscribeForm") {
            form.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
        }
        for name in ["InstanceChangeRequest", "UserChangeRequest"] {
            if let Some(change) = object(openapi, name) {
                change.min_properties = Some(1);
            }
        }
    }
}

/// A component schema that is an object.
fn object<'a>(
    openapi: &'a mut utoipa::openapi::OpenApi,
    name: &str,
) -> Option<&'a mut utoipa::openapi::schema::Object> {
    let components = openapi.components.as_mut()?;
    match components.schemas.get_mut(name)? {
        RefOr::T(Schema::Object(object)) => Some(object),
        _ => None,
    }
}

/// A property of a component object.
fn property<'a>(
    openapi: &'a mut utoipa::openapi::OpenApi,
    schema: &str,
    name: &str,
) -> Option<&'a mut utoipa::openapi::schema::Object> {
    match object(openapi, schema)?.properties.get_mut(name)? {
        RefOr::T(Schema::Object(object)) => Some(object),
        _ => None,
    }
}

/// Sizes the document offers for `/v1/images/generations` (OpenAI's and Stable
/// Diffusion's usual ones), those within `image.max_side`. Any other size in range works.
const COMMON_SIZES: [&str; 9] = [
    "256x256",
    "512x512",
    "512x768",
    "768x512",
    "768x768",
    "1024x1024",
    "1024x1536",
    "1536x1024",
    "2048x2048",
];

/// The document as this server serves it: the limits that come from its settings are its
/// own, so a request the document allows is one the server takes.
pub struct ApiDocument(String);

impl ApiDocument {
    pub fn new(settings: &Settings) -> ApiDocument {
        let mut openapi = ApiDoc::openapi();
        let image = &settings.image;
        for side in ["width", "height"] {
            if let Some(p) = property(&mut openapi, "ImageRequest", side) {
                p.maximum = Some(image.max_side.into());
            }
        }
        for schema in ["ImageRequest", "ImageGenerationRequest"] {
            if let Some(p) = property(&mut openapi, schema, "steps") {
                p.maximum = Some(image.max_steps.into());
            }
        }
        if let Some(p) = property(&mut openapi, "ImageGenerationRequest", "size") {
            let fits = |size: &&str| {
                let (w, h) = size.split_once('x').expect("WIDTHxHEIGHT");
                [w, h]
                    .iter()
                    .all(|side| side.parse::<u32>().is_ok_and(|s| s <= image.max_side))
            };
            let sizes = std::iter::once("auto").chain(COMMON_SIZES.iter().copied().filter(fits));
            p.enum_values = Some(sizes.map(Into::into).collect());
        }
        for text in ["prompt", "negative_prompt"] {
            // Both bodies' prompts are checked by one rule, written once on `ImageRequest`.
            let pattern = property(&mut openapi, "ImageRequest", text).and_then(|p| {
                p.max_length = Some(image.max_prompt_chars);
                p.pattern.clone()
            });
            if let Some(p) = property(&mut openapi, "ImageGenerationRequest", text) {
                p.max_length = Some(image.max_prompt_chars);
                p.pattern = pattern;
            }
        }
        let json = openapi.to_json().expect("the OpenAPI document serializes");
        ApiDocument(json)
    }
}

/// Every documented path with the methods it takes: a wrong method on a known path is a
/// 405 naming them, and a route missing from the document is caught by a test.
static ROUTES: LazyLock<Vec<(ResourceDef, String)>> = LazyLock::new(|| {
    ApiDoc::openapi()
        .paths
        .paths
        .into_iter()
        .map(|(path, item)| {
            let methods = [
                ("GET", item.get.is_some()),
                ("HEAD", item.head.is_some()),
                ("POST", item.post.is_some()),
                ("PUT", item.put.is_some()),
                ("PATCH", item.patch.is_some()),
                ("DELETE", item.delete.is_some()),
            ];
            let allow: Vec<&str> = methods.iter().filter(|m| m.1).map(|m| m.0).collect();
            (ResourceDef::new(path), allow.join(", "))
        })
        .collect()
});

/// The methods a documented path takes (`Allow`'s value), or `None` for an unknown path.
pub fn allowed_methods(path: &str) -> Option<&'static str> {
    ROUTES
        .iter()
        .find(|(route, _)| route.is_match(path))
        .map(|(_, allow)| allow.as_str())
}

async fn document(doc: web::Data<ApiDocument>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc.0.clone())
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api-docs/openapi.json", web::get().to(document))
        .service(SwaggerUi::new("/docs/{_:.*}").config(Config::from("/api-docs/openapi.json")))
        .route(
            "/docs",
            web::get().to(|| async {
                HttpResponse::PermanentRedirect()
                    .insert_header(("Location", "/docs/"))
                    .finish()
            }),
        );
}
