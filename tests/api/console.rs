//! The web console: served from the binary under a strict Content-Security-Policy, and
//! driven in headless Chromium by `tests/browser/console.test.mjs` (Playwright). The
//! browser test needs `INFERGATE_TEST_CHROMIUM` (the browser, which `.ci/run` installs
//! and sets) and `tests/browser/node_modules` (`npm ci` there, which `.ci/run` runs);
//! without the variable it says it was skipped and passes, with it anything missing
//! fails it.

use std::path::Path;
use std::process::Command;

use crate::helpers::{fast_sim, spawn_app_with_speech, start_sims};
use reqwest::StatusCode;

const CHROMIUM_VAR: &str = "INFERGATE_TEST_CHROMIUM";

#[actix_web::test]
async fn the_console_is_served_from_the_binary_with_a_policy_that_forbids_inline_script() {
    let app = crate::helpers::spawn_app().await;
    let page = app.client.get(app.url("/console")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    // Every script is a file of the gateway's own; none is inline.
    for script in html.split("<script").skip(1) {
        let tag = &script[..script.find('>').unwrap()];
        assert!(
            tag.contains("src=\"/console/"),
            "inline or foreign script: {tag}"
        );
        assert!(script[script.find('>').unwrap() + 1..].starts_with("</script>"));
    }
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "a resource from elsewhere"
    );
    for (asset, kind) in [
        ("app.js", "text/javascript"),
        ("style.css", "text/css"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let response = app
            .client
            .get(app.url(&format!("/console/{asset}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(kind));
        assert!(response.headers().contains_key("content-security-policy"));
        let body = response.text().await.unwrap();
        assert!(
            !body.contains("https://"),
            "{asset} names a resource elsewhere"
        );
    }
    let missing = app
        .client
        .get(app.url("/console/nothing.js"))
        .send()
        .await
        .unwrap();
    crate::helpers::assert_error(missing, StatusCode::NOT_FOUND, "not_found").await;
}

#[actix_web::test]
async fn in_headless_chromium_users_and_admins_work_the_console_without_a_console_error() {
    let Some(chromium) = std::env::var_os(CHROMIUM_VAR) else {
        println!("skipped: no {CHROMIUM_VAR} (run .ci/run to install Chromium and Playwright)");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let browser_tests = root.join("tests/browser");
    assert!(
        browser_tests.join("node_modules/playwright-core").is_dir(),
        "no Playwright in tests/browser/node_modules: run `npm ci` there (.ci/run does)"
    );
    // The depth chart has a line once two samples are kept.
    let app = spawn_app_with_speech(start_sims(vec![fast_sim()]), |s| {
        s.stats.depth_sample_secs = 1
    })
    .await;
    app.wait_for_healthy(1).await;
    let admin_token = app.new_admin("root").await.token;
    let drained = start_sims(vec![fast_sim()]);
    let drain_id = app
        .add_image_instance(&admin_token, &drained[0].url())
        .await;
    app.wait_for_healthy(2).await;
    let drain_url = app.instance(&admin_token, drain_id).await.unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    app.new_user("alice").await;
    let other = app.new_user("bob").await.token;
    // A task done in the last hour, for the overview's charts.
    let warm_up = app.submit_ok(&other, "warm-up").await;
    app.wait_for_end(&other, &warm_up).await;

    let shots = root.join("target/console-screenshots");
    let mut node = Command::new("node");
    node.arg("console.test.mjs")
        .current_dir(&browser_tests)
        .env("BASE_URL", &app.address)
        .env("CHROMIUM", chromium)
        .env("SCREENSHOTS", &shots)
        .env("USER_NAME", "alice")
        .env("ADMIN_NAME", "root")
        .env("PASSWORD", "password123")
        .env("OTHER_TOKEN", &other)
        .env("ADMIN_TOKEN", &admin_token)
        .env("DRAIN_URL", &drain_url);
    // Off this thread: the gateway's actors run on it and must keep answering.
    let output = tokio::task::spawn_blocking(move || node.output())
        .await
        .unwrap()
        .expect("run node");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the browser test failed:\n{stdout}\n{stderr}"
    );
    println!("screenshots in {}", shots.display());
}
