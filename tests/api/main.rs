//! End-to-end tests of HTTP API v1 (`gateway/openapi.yaml`) over real sockets on
//! `127.0.0.1:0`: one test binary, one module per concern, small helpers.

mod accounts;
mod admission;
mod bad_input;
mod burst;
mod buying;
mod cli;
mod cross_tenant;
mod deals;
mod docs;
mod draw;
mod edge;
mod external;
mod feed_stream;
mod fuzz;
mod generated_client;
mod helpers;
mod holds;
mod loadtest;
mod ops;
mod platform;
mod qr;
mod reviews;
mod shutdown;
mod stalled_bodies;
mod strict_input;
mod tokens;
