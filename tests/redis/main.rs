//! Multi-node (Redis) mode end to end: real `flashsale serve` processes on
//! real Redis (`REDIS_URL`) and a real Redis Cluster (`REDIS_CLUSTER_URLS`),
//! over real sockets. Without those variables each test says it is skipped.

mod books;
mod books_order;
mod burst;
mod cluster;
mod cluster_acks;
mod durability;
mod epoch;
mod external;
mod failover;
mod faults;
mod feed;
mod loadtest;
mod model;
mod node;
mod platform;
mod proxy;
mod raffle;
mod replicas;
mod tokens;
