//! The API load generator: a short smoke run on each database (no errors over HTTP and
//! HTTPS, sane numbers), and an ignored full run that prints the report (`-- --ignored
//! --nocapture`, in release).
use std::time::Duration;

use vpcep_tests::api_load::{BenchOptions, Report, run};

use crate::harness::{Db, Postgres, TempDir};

async fn bench(db: Db, secs: u64, concurrency: usize) -> Report {
    let dir = TempDir::new("bench");
    let pg = (db == Db::Postgres).then(Postgres::start);
    let db_url = match &pg {
        Some(pg) => pg.url(),
        None => format!("sqlite://{}", dir.0.join("bench.db").display()),
    };
    let report = run(&BenchOptions {
        db_url,
        duration: Duration::from_secs(secs),
        concurrency,
    })
    .await
    .unwrap();
    println!("{report}");
    report
}

both!(bench_smoke);

async fn bench_smoke(db: Db) {
    let r = bench(db, 1, 4).await;
    for t in [&r.plain, &r.tls] {
        assert_eq!(t.reads.errors, 0);
        assert_eq!(t.writes.errors, 0);
        assert!(t.reads.requests > 0 && t.writes.requests > 0);
        assert!(t.reads.p50 <= t.reads.p99);
    }
    let h = &r.handshakes;
    assert_eq!(h.errors, 0);
    assert!(h.tls_per_sec > 0.0 && h.tcp_per_sec > 0.0, "{h:?}");
    assert_eq!(h.tls_version, "TLSv1_3");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
async fn bench_report() {
    let secs = std::env::var("VPCEP_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let clients = std::env::var("VPCEP_BENCH_CLIENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    bench(Db::Sqlite, secs, clients).await;
    bench(Db::Postgres, secs, clients).await;
}
