//! `dcache-operator run` reconciles DistributedCache resources; `dcache-operator crd`
//! prints the CustomResourceDefinition.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use dcache_operator::controller::{self, Context};
use dcache_operator::crd::crd_yaml;
use dcache_operator::leader::LeaderElection;
use dcache_operator::lifecycle::HttpNodeAdmin;
use dcache_operator::metrics::{self, Metrics};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use tracing::{error, info};

#[derive(Parser)]
#[command(
    name = "dcache-operator",
    version,
    about = "The dcache Kubernetes operator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reconcile DistributedCache resources until SIGTERM.
    Run(RunArgs),
    /// Print the DistributedCache CustomResourceDefinition as YAML.
    Crd,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of the operator's own /metrics and /health.
    #[arg(long, env = "DCACHE_OPERATOR_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Namespace of the leader-election Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, env = "DCACHE_OPERATOR_LEASE", default_value = "dcache-operator")]
    lease_name: String,
    /// This replica's name in the Lease; defaults to the pod name or host name.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Reconcile without a Lease (a single replica, e.g. during development).
    #[arg(long, default_value_t = false)]
    no_leader_election: bool,
}

/// A Lease unrenewed for this long passes to a standby replica.
const LEASE_DURATION: Duration = Duration::from_secs(15);
const LEASE_RENEW_EVERY: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", crd_yaml());
            Ok(())
        }
        Command::Run(args) => run(args).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let client = Client::try_default()
        .await
        .context("no Kubernetes configuration (in-cluster or kubeconfig)")?;
    if !controller::crd_installed(&client).await? {
        error!("the DistributedCache CRD is not installed");
        eprintln!(
            "The DistributedCache CRD is not installed. Install it with\n  \
             kubectl apply -f crds/distributedcache.yaml\nor\n  \
             dcache-operator crd | kubectl apply -f -"
        );
        std::process::exit(2);
    }

    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    info!(listen = %args.listen, "operator metrics and health serving");
    let app = metrics::router(registry.clone());
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            error!(%error, "metrics server stopped");
        }
    });

    if !args.no_leader_election {
        let identity = args.identity.clone().unwrap_or_else(|| {
            std::env::var("HOSTNAME").unwrap_or_else(|_| format!("pid-{}", std::process::id()))
        });
        let leases = Api::<Lease>::namespaced(client.clone(), &args.lease_namespace);
        let election = LeaderElection::new(leases, &args.lease_name, &identity, LEASE_DURATION);
        info!(%identity, lease = %args.lease_name, "waiting for leadership");
        while !election.try_acquire_or_renew().await.unwrap_or(false) {
            tokio::time::sleep(LEASE_RENEW_EVERY).await;
        }
        info!(%identity, "leading");
        tokio::spawn(keep_leadership(election));
    }

    let ctx = Arc::new(Context::new(
        client,
        metrics,
        Arc::new(HttpNodeAdmin::new()),
    ));
    controller::run(ctx).await;
    Ok(())
}

/// Renews the Lease; exits the process once it could not for a whole Lease duration, so
/// a replica that lost leadership never reconciles beside the new leader (Kubernetes
/// restarts it as a standby).
async fn keep_leadership(election: LeaderElection) {
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(LEASE_RENEW_EVERY).await;
        match election.try_acquire_or_renew().await {
            Ok(true) => last_renewed = tokio::time::Instant::now(),
            Ok(false) => {
                error!("another replica took the leader Lease; exiting");
                std::process::exit(1);
            }
            Err(e) => error!(error = %e, "could not renew the leader Lease"),
        }
        if last_renewed.elapsed() > LEASE_DURATION - LEASE_RENEW_EVERY {
            error!("leader Lease not renewed in time; exiting");
            std::process::exit(1);
        }
    }
}
