//! The web console at `/console`: a few static files compiled into the binary (plain ES
//! modules, no build step, nothing fetched from elsewhere), served with a
//! Content-Security-Policy that allows only the gateway's own scripts. Every action the
//! console offers is a call to the JSON API with the user's token, under the same checks
//! as any other client's.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use crate::error::ApiError;

/// Scripts, styles and connections only from here; no inline script or style, no
/// plugins, no framing. Images may be the `blob:` URLs the console makes of the images
/// it fetched with the user's token.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; \
    connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Each asset: its name under `/console/`, its type and its bytes.
const ASSETS: [(&str, &str, &str); 9] = [
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../console/index.html"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../console/style.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../console/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../console/api.js"),
    ),
    (
        "dom.js",
        "text/javascript; charset=utf-8",
        include_str!("../console/dom.js"),
    ),
    (
        "user.js",
        "text/javascript; charset=utf-8",
        include_str!("../console/user.js"),
    ),
    (
        "admin.js",
        "text/javascript; charset=utf-8",
        include_str!("../console/admin.js"),
    ),
    (
        "charts.js",
        "text/javascript; charset=utf-8",
        include_str!("../console/charts.js"),
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_str!("../console/icon.svg"),
    ),
];

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/console", web::get().to(index))
        .route("/console/", web::get().to(index))
        .route("/console/{name}", web::get().to(asset));
}

async fn index() -> HttpResponse {
    serve("index.html").expect("the console has an index")
}

async fn asset(name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    serve(&name).ok_or(ApiError::NotFound("console file"))
}

fn serve(name: &str) -> Option<HttpResponse> {
    let (_, content_type, body) = ASSETS.iter().find(|(n, _, _)| *n == name)?;
    Some(
        HttpResponse::Ok()
            .content_type(*content_type)
            .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            .insert_header((header::REFERRER_POLICY, "no-referrer"))
            // Small and compiled in: revalidated each time, so a new binary is seen.
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .body(*body),
    )
}
