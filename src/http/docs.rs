//! The OpenAPI document (`/api-docs/openapi.json`), generated from the handlers, and
//! Swagger UI at `/docs`.

use actix_web::{web, HttpResponse};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use super::{accounts, admin, image, keys, openai, speech, system, tasks};

#[derive(OpenApi)]
#[openapi(
    info(title = "infergate", description = "Asynchronous task gateway for GPU inference backends."),
    paths(
        accounts::register, accounts::login,
        image::submit, image::get_image,
        tasks::get_tasks, tasks::cancel_task,
        speech::transcribe, speech::pcm,
        keys::create_key, keys::list_keys, keys::delete_key,
        system::health, system::ready, system::stats,
        admin::list_instances, admin::add_instance, admin::update_instance, admin::remove_instance,
        admin::list_nodes,
        openai::images::generations, openai::transcriptions::transcriptions, openai::models::list_models,
    ),
    components(schemas(crate::error::ErrorBody, crate::error::OpenAiErrorBody)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "accounts", description = "Registration and login"),
        (name = "image", description = "Asynchronous text-to-image"),
        (name = "tasks", description = "Task status"),
        (name = "speech", description = "Synchronous speech to text (JWT or device API key)"),
        (name = "keys", description = "Device API keys"),
        (name = "system", description = "Health and queue figures"),
        (name = "admin", description = "Backend instances at run time (admin role)"),
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

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(SwaggerUi::new("/docs/{_:.*}").url("/api-docs/openapi.json", ApiDoc::openapi()))
        .route(
            "/docs",
            web::get().to(|| async {
                HttpResponse::PermanentRedirect()
                    .insert_header(("Location", "/docs/"))
                    .finish()
            }),
        );
}
