//! The agents' change feed, Kubernetes-style list + watch:
//! `GET /feed/snapshot` lists every agent-relevant object at revision R, and
//! `GET /feed/watch?after=R` streams the changes after R as newline-delimited JSON.
//! A watcher whose R is older than the retained log is told to relist.
//! [`wire`] is the format both sides share; [`server`] serves it; the agent's client
//! (`crate::agent::feed_client`) reads it.
pub mod server;
pub mod wire;
