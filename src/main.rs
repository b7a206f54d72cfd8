use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = reviews::cli::Cli::parse();
    reviews::telemetry::init();
    reviews::cli::run(cli).await
}
