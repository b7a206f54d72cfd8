//! The staging schema a load fills, the keys and indexes built on it, and the swap that replaces
//! the live tables with it in one transaction: readers see the old data set until that commit,
//! then the new one. The staging tables are committed before their keys are built (so that
//! several connections can build them) but are never read by the service; a failed load drops
//! them, and the next load drops what a killed one left.

use tokio_postgres::Transaction;

pub const SCHEMA: &str = "reviews_staging";

/// The data-set tables and the aggregates kept from them, parents first.
pub const TABLES: [&str; 5] = [
    "reviews",
    "characteristics",
    "reviews_photos",
    "characteristic_reviews",
    "product_stats",
];

/// Empty copies of the live tables (columns, defaults, generated columns, identities, checks),
/// without indexes and keys, which are cheaper to build once the rows are in. Autovacuum leaves
/// them alone until the swap: the rows are written frozen and the load gathers the statistics
/// itself, and a vacuum still running at the swap would hold it up until it is cancelled.
pub async fn create(tx: &Transaction<'_>) -> anyhow::Result<()> {
    let mut sql = format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA};");
    for table in TABLES {
        sql.push_str(&format!(
            "CREATE TABLE {SCHEMA}.{table} (LIKE public.{table} INCLUDING DEFAULTS \
             INCLUDING GENERATED INCLUDING IDENTITY INCLUDING CONSTRAINTS) \
             WITH (autovacuum_enabled = off);"
        ));
    }
    tx.batch_execute(&sql).await?;
    Ok(())
}

/// The statements that give the staging tables the live tables' keys and indexes, read from the
/// catalog so they follow the migrations, in the order [`build`] runs them.
pub struct Definitions {
    /// `CREATE UNIQUE INDEX` for each primary key and unique constraint, under its name.
    key_indexes: Vec<(String, String)>,
    /// `ALTER TABLE ... ADD CONSTRAINT ... USING INDEX` for those, then every foreign key
    /// `NOT VALID` (the loader checked every reference): quick catalog changes.
    constraints: Vec<String>,
    /// Per table, whatever only reads or indexes that table: the other indexes, the validation of
    /// its foreign keys, and `ANALYZE`.
    lanes: Vec<(String, Vec<String>)>,
}

pub async fn definitions(db: &tokio_postgres::Client) -> anyhow::Result<Definitions> {
    let tables: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
    // With the live schema alone on the path, definitions name its tables unqualified.
    db.batch_execute("SET search_path = public").await?;
    let constraints = db
        .query(
            "SELECT r.relname::text, c.conname::text, pg_get_constraintdef(c.oid),
                    CASE WHEN c.contype = 'f' THEN NULL ELSE pg_get_indexdef(c.conindid) END
             FROM pg_constraint c
             JOIN pg_class r ON r.oid = c.conrelid
             JOIN pg_namespace n ON n.oid = r.relnamespace
             WHERE n.nspname = 'public' AND r.relname = ANY($1) AND c.contype IN ('p', 'u', 'f')
             ORDER BY c.contype = 'f', r.relname, c.conname",
            &[&tables],
        )
        .await?;
    let indexes = db
        .query(
            "SELECT i.tablename::text, i.indexdef FROM pg_indexes i
             WHERE i.schemaname = 'public' AND i.tablename = ANY($1)
               AND NOT EXISTS (SELECT 1 FROM pg_constraint c
                               WHERE c.conindid = format('%I.%I', i.schemaname, i.indexname)::regclass)
             ORDER BY i.tablename, i.indexname",
            &[&tables],
        )
        .await?;
    db.batch_execute("RESET search_path").await?;

    let mut defs = Definitions {
        key_indexes: Vec::new(),
        constraints: Vec::new(),
        lanes: TABLES.iter().map(|t| (t.to_string(), Vec::new())).collect(),
    };
    // A lane holds its table's other indexes first, then its foreign-key checks.
    for row in indexes {
        let (table, def): (String, String) = (row.get(0), row.get(1));
        let sql = to_staging(&table, &def)?;
        defs.lane(&table)?.push(sql);
    }
    for row in constraints {
        let (table, name, def, index): (String, String, String, Option<String>) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let alter = format!("ALTER TABLE {SCHEMA}.{table} ADD CONSTRAINT {name}");
        match index {
            Some(index) => {
                let kind = def
                    .split(" (")
                    .next()
                    .filter(|k| matches!(*k, "PRIMARY KEY" | "UNIQUE"))
                    .ok_or_else(|| anyhow::anyhow!("unexpected constraint {name}: {def}"))?;
                defs.key_indexes
                    .push((table.clone(), to_staging(&table, &index)?));
                defs.constraints
                    .push(format!("{alter} {kind} USING INDEX {name}"));
            }
            None => {
                // References name the live tables; in the staging schema, first on the path
                // when these run, the same names are the staging tables.
                defs.constraints.push(format!("{alter} {def} NOT VALID"));
                defs.lane(&table)?.push(format!(
                    "ALTER TABLE {SCHEMA}.{table} VALIDATE CONSTRAINT {name}"
                ));
            }
        }
    }
    for (table, statements) in &mut defs.lanes {
        statements.push(format!("ANALYZE {SCHEMA}.{table}"));
    }
    Ok(defs)
}

impl Definitions {
    /// The statements that run on `table` alone, after its keys.
    fn lane(&mut self, table: &str) -> anyhow::Result<&mut Vec<String>> {
        self.lanes
            .iter_mut()
            .find(|(t, _)| t == table)
            .map(|(_, statements)| statements)
            .ok_or_else(|| anyhow::anyhow!("unexpected table {table}"))
    }
}

/// An index definition of a live table, on the staging table instead.
fn to_staging(table: &str, def: &str) -> anyhow::Result<String> {
    [format!(" ON public.{table} "), format!(" ON {table} ")]
        .iter()
        .find(|on| def.contains(on.as_str()))
        .map(|on| def.replacen(on.as_str(), &format!(" ON {SCHEMA}.{table} "), 1))
        .ok_or_else(|| anyhow::anyhow!("unexpected index definition: {def}"))
}

/// Builds the keys, indexes, foreign keys and statistics of the committed staging tables over
/// the `workers` connections, most of it in parallel: PostgreSQL builds one index or checks one
/// foreign key per connection on one core, so on a machine of a few cores two connections finish
/// in a little over half the time of one. First the indexes behind the primary keys and unique
/// constraints (each needs only a SHARE lock on its table, so any two run side by side, biggest
/// table first); then, on one connection, the quick catalog changes that turn them into
/// constraints and add the foreign keys unchecked; then one lane per table (its other indexes,
/// the check of its foreign keys, its statistics), the lanes in parallel, as their locks allow:
/// validating a foreign key locks the referenced table only against DDL, not against an index
/// build.
pub async fn build(workers: &[&tokio_postgres::Client], defs: &Definitions) -> anyhow::Result<()> {
    let (first, _) = workers.split_first().expect("at least one connection");
    for db in workers {
        db.batch_execute(&format!("SET search_path = {SCHEMA}, public"))
            .await?;
    }
    let sizes = table_sizes(first).await?;
    let size = |table: &str| {
        sizes
            .iter()
            .find(|(t, _)| t == table)
            .map_or(0, |(_, s)| *s)
    };

    let mut keys: Vec<(i64, Vec<String>)> = defs
        .key_indexes
        .iter()
        .map(|(table, sql)| (size(table), vec![sql.clone()]))
        .collect();
    keys.sort_by_key(|(size, _)| std::cmp::Reverse(*size));
    in_parallel(workers, keys.into_iter().map(|(_, s)| s).collect()).await?;

    for sql in &defs.constraints {
        first.batch_execute(sql).await?;
    }

    // A lane's cost: its table's size times the statements that scan it.
    let mut lanes: Vec<(i64, Vec<String>)> = defs
        .lanes
        .iter()
        .map(|(table, statements)| (size(table) * statements.len() as i64, statements.clone()))
        .collect();
    lanes.sort_by_key(|(cost, _)| std::cmp::Reverse(*cost));
    in_parallel(workers, lanes.into_iter().map(|(_, s)| s).collect()).await?;

    for db in workers {
        db.batch_execute("RESET search_path").await?;
    }
    Ok(())
}

async fn table_sizes(db: &tokio_postgres::Client) -> anyhow::Result<Vec<(String, i64)>> {
    let rows = db
        .query(
            "SELECT c.relname::text, pg_table_size(c.oid) FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind = 'r'",
            &[&SCHEMA],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Runs the jobs (each a list of statements run in order) on the connections, each connection
/// taking the next job when it is free. On the first failure the statements still running on the
/// other connections are cancelled, so that no lock outlives the load's error.
async fn in_parallel(
    workers: &[&tokio_postgres::Client],
    jobs: Vec<Vec<String>>,
) -> anyhow::Result<()> {
    let queue = &std::sync::Mutex::new(jobs.into_iter());
    let runs = workers.iter().map(|&db| async move {
        loop {
            let job = queue.lock().expect("never poisoned").next();
            let Some(job) = job else { break };
            for sql in job {
                tracing::debug!(%sql, "building");
                db.batch_execute(&sql).await?;
            }
        }
        anyhow::Ok(())
    });
    let result = futures_util::future::try_join_all(runs).await;
    if result.is_err() {
        for db in workers {
            let _ = db.cancel_token().cancel_query(tokio_postgres::NoTls).await;
        }
    }
    result.map(drop)
}

/// Moves every id sequence past the largest loaded id.
pub async fn set_sequences(tx: &Transaction<'_>) -> anyhow::Result<()> {
    for table in &TABLES[..4] {
        tx.batch_execute(&format!(
            "SELECT setval(pg_get_serial_sequence('{SCHEMA}.{table}', 'id'),
                           coalesce(max(id), 0) + 1, false) FROM {SCHEMA}.{table}"
        ))
        .await?;
    }
    Ok(())
}

/// Replaces the live tables with the staging ones, and forgets the named voters' votes and the
/// idempotency keys: their review ids may name other reviews in the new data set.
pub async fn swap(tx: &Transaction<'_>) -> anyhow::Result<()> {
    let live: Vec<String> = TABLES.iter().map(|t| format!("public.{t}")).collect();
    let mut sql = format!(
        "DROP TABLE {}; TRUNCATE public.review_votes, public.idempotency_keys;",
        live.join(", ")
    );
    for table in TABLES {
        sql.push_str(&format!(
            "ALTER TABLE {SCHEMA}.{table} RESET (autovacuum_enabled);
             ALTER TABLE {SCHEMA}.{table} SET SCHEMA public;"
        ));
    }
    sql.push_str(&format!("DROP SCHEMA {SCHEMA};"));
    tx.batch_execute(&sql).await?;
    Ok(())
}
