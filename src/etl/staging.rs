//! The staging schema a load fills, and the swap that replaces the live tables with it inside
//! the load's transaction: readers see the old data set until the commit, then the new one.

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
/// without indexes and keys, which are cheaper to build once the rows are in.
pub async fn create(tx: &Transaction<'_>) -> anyhow::Result<()> {
    let mut sql = format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA};");
    for table in TABLES {
        sql.push_str(&format!(
            "CREATE TABLE {SCHEMA}.{table} (LIKE public.{table} INCLUDING DEFAULTS \
             INCLUDING GENERATED INCLUDING IDENTITY INCLUDING CONSTRAINTS);"
        ));
    }
    tx.batch_execute(&sql).await?;
    Ok(())
}

/// Gives the staging tables the live tables' keys and indexes, read from the catalog so they
/// follow the migrations. Foreign keys are added `NOT VALID` (the loader checked every
/// reference) and validated after the swap, without blocking readers.
pub async fn build_keys_and_indexes(tx: &Transaction<'_>) -> anyhow::Result<()> {
    let tables: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
    // With the live schema first on the path, definitions name its tables unqualified.
    tx.batch_execute("SET LOCAL search_path = public").await?;
    let constraints = tx
        .query(
            "SELECT r.relname::text, c.conname::text, pg_get_constraintdef(c.oid), c.contype = 'f'
             FROM pg_constraint c
             JOIN pg_class r ON r.oid = c.conrelid
             JOIN pg_namespace n ON n.oid = r.relnamespace
             WHERE n.nspname = 'public' AND r.relname = ANY($1) AND c.contype IN ('p', 'u', 'f')
             ORDER BY c.contype = 'f', r.relname, c.conname",
            &[&tables],
        )
        .await?;
    let indexes = tx
        .query(
            "SELECT i.tablename::text, i.indexdef FROM pg_indexes i
             WHERE i.schemaname = 'public' AND i.tablename = ANY($1)
               AND NOT EXISTS (SELECT 1 FROM pg_constraint c
                               WHERE c.conindid = format('%I.%I', i.schemaname, i.indexname)::regclass)",
            &[&tables],
        )
        .await?;
    tx.batch_execute(&format!("SET LOCAL search_path = {SCHEMA}, public"))
        .await?;
    for row in constraints {
        let (table, name, def, foreign): (String, String, String, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let not_valid = if foreign { " NOT VALID" } else { "" };
        tx.batch_execute(&format!(
            "ALTER TABLE {SCHEMA}.{table} ADD CONSTRAINT {name} {def}{not_valid}"
        ))
        .await?;
    }
    for row in indexes {
        let (table, def): (String, String) = (row.get(0), row.get(1));
        let def = [format!(" ON public.{table} "), format!(" ON {table} ")]
            .iter()
            .find(|on| def.contains(on.as_str()))
            .map(|on| def.replacen(on.as_str(), &format!(" ON {SCHEMA}.{table} "), 1))
            .ok_or_else(|| anyhow::anyhow!("unexpected index definition: {def}"))?;
        tx.batch_execute(&def).await?;
    }
    tx.batch_execute("SET LOCAL search_path = public").await?;
    Ok(())
}

/// Moves every id sequence past the largest loaded id, and gathers planner statistics.
pub async fn finish(tx: &Transaction<'_>) -> anyhow::Result<()> {
    for table in &TABLES[..4] {
        tx.batch_execute(&format!(
            "SELECT setval(pg_get_serial_sequence('{SCHEMA}.{table}', 'id'),
                           coalesce(max(id), 0) + 1, false) FROM {SCHEMA}.{table};
             ANALYZE {SCHEMA}.{table};"
        ))
        .await?;
    }
    tx.batch_execute(&format!("ANALYZE {SCHEMA}.product_stats"))
        .await?;
    Ok(())
}

/// Replaces the live tables with the staging ones.
pub async fn swap(tx: &Transaction<'_>) -> anyhow::Result<()> {
    let live: Vec<String> = TABLES.iter().map(|t| format!("public.{t}")).collect();
    let mut sql = format!("DROP TABLE {};", live.join(", "));
    for table in TABLES {
        sql.push_str(&format!("ALTER TABLE {SCHEMA}.{table} SET SCHEMA public;"));
    }
    sql.push_str(&format!("DROP SCHEMA {SCHEMA};"));
    tx.batch_execute(&sql).await?;
    Ok(())
}

/// Validates the foreign keys added `NOT VALID`; readers and writers are not blocked.
pub async fn validate_foreign_keys(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    let tables: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
    let rows = client
        .query(
            "SELECT r.relname::text, c.conname::text FROM pg_constraint c
             JOIN pg_class r ON r.oid = c.conrelid
             JOIN pg_namespace n ON n.oid = r.relnamespace
             WHERE n.nspname = 'public' AND r.relname = ANY($1) AND NOT c.convalidated",
            &[&tables],
        )
        .await?;
    for row in rows {
        let (table, name): (String, String) = (row.get(0), row.get(1));
        client
            .batch_execute(&format!(
                "ALTER TABLE public.{table} VALIDATE CONSTRAINT {name}"
            ))
            .await?;
    }
    Ok(())
}
