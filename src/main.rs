// glibc's malloc took 8 % of a cache hit's CPU (perf, scripts/bench); mimalloc's thread-local
// free lists take less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = reviews::cli::Cli::parse_or_exit();
    reviews::telemetry::init();
    reviews::cli::run(cli).await
}
