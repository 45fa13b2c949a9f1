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
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let node = build_node(&config);
    info!(
        node_id = %node.node_id,
        listen = %listener.local_addr()?,
        max_memory = config.max_memory,
        eviction_policy = config.eviction_policy.as_str(),
        "dcache-node serving"
    );
    serve(
        listener,
        node,
        ServeOptions::from_config(&config),
        shutdown_signal(),
    )
    .await
    .context("server failed")?;
    info!("dcache-node stopped");
    Ok(())
}
