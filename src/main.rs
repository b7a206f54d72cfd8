#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = reviews::cli::Cli::parse_or_exit();
    reviews::telemetry::init();
    reviews::cli::run(cli).await
}
