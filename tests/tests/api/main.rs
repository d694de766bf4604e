//! Control-plane integration tests: every operation and rule of the VPCEP API, the inventory
//! API and the change feed, against a real in-process server on a loopback port, each test on
//! a fresh SQLite file and on a fresh throwaway PostgreSQL server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fixtures;
mod harness;

/// Runs an async scenario `fn(Db)` once on SQLite and once on PostgreSQL.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(crate::harness::Db::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(crate::harness::Db::Postgres).await
                }
            }
        )*
    };
}

mod audit;
mod auth;
mod bench;
mod concurrency;
mod consumer_view;
mod dns;
mod endpoints;
mod feed;
mod input;
mod inventory;
mod limits;
mod openapi;
mod permissions;
mod rate_limits;
mod sdk;
mod services;
mod story;
mod strict;
mod tags;
mod tls;
