use anyhow::Context;
use clap::Parser;
use dcache_node::config::{LogFormat, NodeConfig};
use dcache_node::server::{
    Listeners, Listening, ServeOptions, build_node, serve_with, shutdown_signal,
};
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

fn main() -> anyhow::Result<()> {
    let config = NodeConfig::parse();
    init_logging(config.log_format);
    // One thread needs no work stealing: the current-thread scheduler runs woken tasks in
    // the order they were woken, which lets the Raft streams batch what every group queued.
    let mut runtime = if config.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut runtime = tokio::runtime::Builder::new_multi_thread();
        if config.worker_threads > 0 {
            runtime.worker_threads(config.worker_threads);
        }
        runtime
    };
    runtime
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run(config))
}

async fn run(config: NodeConfig) -> anyhow::Result<()> {
    let listening = Listening::from_config(&config)?;
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
    let resp_listener = match config.resp_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for RESP on {addr}"))?,
        ),
        None => None,
    };
    let api_addr = listener.local_addr()?;
    let raft_addr = raft_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let resp_addr = resp_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let node = build_node(&config, api_addr, raft_addr, resp_addr)?;
    let shutdown = shutdown_signal();
    info!(
        node_id = %node.node_id,
        listen = %api_addr,
        raft = %raft_addr.map_or_else(|| "standalone".to_owned(), |a| a.to_string()),
        resp = %resp_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        max_memory = config.max_memory,
        tls = config.tls_cert_file.is_some(),
        auth = !config.tokens_file.is_empty(),
        eviction_policy = config.eviction_policy.as_str(),
        "dcache-node serving"
    );
    serve_with(
        Listeners {
            api: listener,
            raft: raft_listener,
            resp: resp_listener,
        },
        node,
        ServeOptions::from_config(&config),
        listening,
        shutdown,
    )
    .await
    .context("server failed")?;
    info!("dcache-node stopped");
    Ok(())
}
