//! The official Python SDK, unchanged, drives the server over HTTPS with verification on
//! (`sdk_story.py`). Ignored by default:
//! set VPCEP_SDK_PYTHON to a Python that has `huaweicloudsdkvpcep==3.1.219` installed and run
//! with `--ignored`.
use std::process::Command;

use crate::{
    fixtures::world,
    harness::{Db, Env, Pki, TempDir},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs VPCEP_SDK_PYTHON (a Python with huaweicloudsdkvpcep installed)"]
async fn official_python_sdk() {
    let python = std::env::var("VPCEP_SDK_PYTHON").expect("VPCEP_SDK_PYTHON is not set");
    let pki = Pki::new();
    let env = Env::tls(Db::Sqlite, &pki).await;
    let w = world(&env).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/sdk_story.py");
    let url = env.server.url();
    let ca = pki.ca_file();
    let home = TempDir::new("sdk-home");
    let home_path = home.0.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .env("VPCEP_URL", url)
            .env("VPCEP_CA_FILE", ca)
            .env("PORT", &w.backend_port)
            .env("PVPC", &w.provider_vpc)
            .env("CVPC", &w.consumer_vpc)
            .env("CSUBNET", &w.consumer_subnet)
            // The SDK writes ~/.huaweicloud/application_id; keep it out of the real home.
            .env("HOME", home_path)
            .output()
            .expect("running python")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
