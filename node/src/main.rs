use anyhow::Context;
use clap::Parser;
use dcache_node::config::{LogFormat, NodeConfig};
use dcache_node::server::{ServeOptions, build_node, serve, shutdown_signal};
use tracing::info;
use tracing_subscriber::EnvFilter;

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = NodeConfig::parse();
    init_logging(config.log_format);
    // Before anything says it serves, so that a SIGTERM from then on stops it cleanly.
    let shutdown = shutdown_signal();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let raft_listener = match config.raft_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for Raft on {addr}"))?,
        ),
        None => None,
    };
    let api_addr = listener.local_addr()?;
    let raft_addr = raft_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let node = build_node(&config, api_addr, raft_addr)?;
    info!(
        node_id = %node.node_id,
        listen = %api_addr,
        raft = %raft_addr.map_or_else(|| "standalone".to_owned(), |a| a.to_string()),
        max_memory = config.max_memory,
        eviction_policy = config.eviction_policy.as_str(),
        "dcache-node serving"
    );
    serve(
        listener,
        raft_listener,
        node,
        ServeOptions::from_config(&config),
        shutdown,
    )
    .await
    .context("server failed")?;
    info!("dcache-node stopped");
    Ok(())
}
