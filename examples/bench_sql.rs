//! Writes `pgbench` scripts of the service's own read queries for `scripts/bench`: `list.sql`
//! (the first page of 5, relevant order) and `meta.sql`, each for a product id drawn at random
//! over `1..=products`, so PostgreSQL alone can be measured on exactly what the service asks.
//!
//! Usage: `bench_sql <dir> <products>`

use reviews::db::queries::{list_sql, META_SQL};
use reviews::reviews::Sort;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, products] = args.as_slice() else {
        anyhow::bail!("usage: bench_sql <dir> <products>");
    };
    let products: u64 = products.parse()?;
    let header = format!("\\set p random(1, {products})\n");
    // pgbench's variables in place of the bind parameters; one statement per line.
    let flat = |sql: &str| sql.split_whitespace().collect::<Vec<_>>().join(" ");
    let list = flat(list_sql(Sort::Relevant))
        .replace("$1", ":p")
        .replace("$2", "5")
        .replace("$3", "0");
    let meta = flat(META_SQL).replace("$1", ":p");
    std::fs::write(format!("{dir}/list.sql"), format!("{header}{list};\n"))?;
    std::fs::write(format!("{dir}/meta.sql"), format!("{header}{meta};\n"))?;
    Ok(())
}
