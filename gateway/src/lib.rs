//! The gateway: every transport and the server binary's parts.
//!
//! Reports flow one way: a transport ([`coap`], [`mqtt`]) decodes a device's
//! bytes, [`ingest`] checks who sent them and queues them for the group-commit
//! writer, the writer stores them through [`store`] and, after the commit,
//! answers the device and hands the dashboard events to [`mqtt`]. [`http`]
//! serves `/metrics` and health; [`config`] is the one typed configuration.

pub mod admin;
pub mod bridges;
pub mod coap;
pub mod config;
pub mod http;
pub mod ingest;
pub mod keys;
pub mod metrics;
pub mod mqtt;
pub mod process;
pub mod server;
pub mod store;
pub mod twofa;
