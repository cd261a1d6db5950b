//! A full disk under the SQLite file: submissions are refused with 503 while it is full,
//! nothing acknowledged is lost, and the gateway writes again once space comes back.
//! Needs root, to mount a small tmpfs; without, it says it is skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{fast_sim, spawn_app_with};
use crate::poll::eventually;

/// A tmpfs of `megabytes`, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(megabytes: u32) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}M"), "tmpfs"])
            .arg(dir.path())
            .output()
            .ok()?;
        if !mounted.status.success() {
            eprintln!(
                "skipped: cannot mount a tmpfs (root is needed): {}",
                String::from_utf8_lossy(&mounted.stderr).trim()
            );
            return None;
        }
        Some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the disk but for `leave` bytes; answers the filler's path.
    fn fill(&self, leave: u64) -> PathBuf {
        let filler = self.path().join("filler");
        let stat = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(self.path())
            .output()
            .unwrap();
        let avail: u64 = String::from_utf8_lossy(&stat.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::fs::write(&filler, vec![0u8; avail.saturating_sub(leave) as usize]).ok();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[actix_web::test]
async fn a_full_disk_refuses_submissions_loses_nothing_and_recovers_when_space_returns() {
    let Some(disk) = SmallDisk::mount(6) else {
        return;
    };
    let url = format!("sqlite://{}?mode=rwc", disk.path().join("g.db").display());
    let app = spawn_app_with(vec![fast_sim()], |s| {
        s.database.url = url;
        s.queue.capacity = 10_000;
    })
    .await;
    let user = app.new_user("alice").await;
    let submit = |i: usize| {
        let body = json!({ "prompt": format!("prompt {i} {}", "padding ".repeat(200)) });
        let (app, token) = (&app, &user.token);
        async move { app.submit_image(token, &body).await }
    };
    let mut accepted = vec![app.submit_ok(&user.token, "before the disk fills").await];

    let filler = disk.fill(64 * 1024);
    let mut refused = 0;
    for i in 0..400 {
        let response = submit(i).await;
        match response.status() {
            StatusCode::ACCEPTED => {
                let body: Value = response.json().await.unwrap();
                accepted.push(body["task_id"].as_str().unwrap().to_string());
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["code"], "database_unavailable", "{body}");
                refused += 1;
                if refused == 20 {
                    break;
                }
            }
            other => panic!("unexpected {other}: {}", response.text().await.unwrap()),
        }
    }
    assert_eq!(refused, 20, "the disk never filled up");

    std::fs::remove_file(filler).unwrap();
    // Within seconds of space coming back, submissions are taken again, all of them.
    eventually(
        "a submission accepted again",
        Duration::from_secs(15),
        || async {
            let response = submit(1000).await;
            match response.status() {
                StatusCode::ACCEPTED => {
                    let body: Value = response.json().await.unwrap();
                    Ok(body["task_id"].as_str().unwrap().to_string())
                }
                status => Err(status),
            }
        },
    )
    .await;
    for i in 0..20 {
        let response = submit(2000 + i).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "space is back");
    }
    // Every acknowledged task is there, and ends DONE.
    for task_id in &accepted {
        let (_, task) = app.wait_for_end(&user.token, task_id).await;
        assert_eq!(task["status"], "DONE", "{task}");
    }
}
