//! What metrics and traces cost the submission path.

use std::time::{Duration, Instant};

use super::{median, start_sim, Rig, FAST_PINGS};

/// Telemetry's cost: submissions/s at 64 clients with nothing watching, with `/metrics`
/// scraped every second, and scraped with every span exported over OTLP to a receiver
/// that takes and drops them; rounds alternate (A, B, C, A, B, C…) on a shared machine
/// and the medians are printed. Metrics are always recorded: what recording costs per
/// submission is measured in-process, apart.
pub async fn telemetry_scenario() {
    let (clients, total, rounds) = (64, 6_000, 3);
    // Spans are made at info level: the same filter for all three, so that only the
    // export differs (the gateways inherit it; it overrides their `log.level`).
    std::env::set_var("RUST_LOG", "warn,infergate=info");
    let receiver = start_otlp_sink();
    let traced = format!("{FAST_PINGS}[telemetry]\notlp_endpoint = \"{receiver}\"\n");
    let sampled = format!("{traced}sample_ratio = 0.1\n");
    let setups = [
        ("bare", false, FAST_PINGS.to_string()),
        ("metrics", true, FAST_PINGS.to_string()),
        ("metrics+traces", true, traced),
        ("metrics+traces sampled 10%", true, sampled),
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    for round in 0..rounds {
        for (i, (label, scrape, extra)) in setups.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            // A backend that never finishes in time: only the submission path is measured.
            let (sim, url) = start_sim(dir.path(), 600_000, 1);
            let rig = Rig::launch(dir, vec![sim], &[(url, 1)], extra).await;
            rig.wait_healthy().await;
            let scraper = scrape
                .then(|| tokio::spawn(scrape_every_second(rig.client.clone(), rig.base.clone())));
            let (latencies, elapsed) = rig.submit_load(clients, total).await;
            if let Some(scraper) = scraper {
                scraper.abort();
            }
            let rate = latencies.len() as f64 / elapsed.as_secs_f64();
            println!("telemetry round {round} {label}: {rate:.0} submissions/s");
            rates[i].push(rate);
        }
    }
    let medians: Vec<f64> = rates.iter_mut().map(|r| median(r)).collect();
    for ((label, _, _), median) in setups.iter().zip(&medians) {
        let cost = (1.0 - median / medians[0]) * 100.0;
        println!("telemetry {label}: median {median:.0} submissions/s at {clients} clients ({cost:+.1}% slower than bare)");
    }
    let per_submit = recording_cost_per_submission();
    println!(
        "telemetry: recording the metrics of one submission takes {per_submit:.0} ns ({:.2}% of a submission's share of the machine at the bare median)",
        per_submit * medians[0] / 1e9 * 100.0
    );
}

/// What the gateway records for one accepted submission: its HTTP request, the counter,
/// and its share of a group commit.
fn recording_cost_per_submission() -> f64 {
    use infergate::telemetry::METRICS;
    let n = 1_000_000;
    let started = Instant::now();
    for _ in 0..n {
        METRICS.http_request(
            "POST",
            Some("/api/v1/image/async".into()),
            202,
            Duration::from_micros(900),
        );
        METRICS.task_submitted();
        METRICS.db_commit(Duration::from_micros(500), 32);
    }
    started.elapsed().as_nanos() as f64 / n as f64
}

async fn scrape_every_second(client: reqwest::Client, base: String) {
    loop {
        let scrape = client.get(format!("{base}/metrics")).send().await;
        let _ = scrape.expect("scrape").bytes().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// An OTLP/HTTP receiver that drops what it is sent, on its own thread; its base URL.
fn start_otlp_sink() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let app = || {
                actix_web::App::new()
                    .app_data(actix_web::web::PayloadConfig::new(64 << 20))
                    .route(
                        "/v1/traces",
                        actix_web::web::post().to(|_: actix_web::web::Bytes| async {
                            actix_web::HttpResponse::Ok().finish()
                        }),
                    )
            };
            actix_web::HttpServer::new(app)
                .workers(1)
                .listen(listener)
                .unwrap()
                .run()
                .await
        })
    });
    url
}
