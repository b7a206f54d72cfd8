//! Prepared-statement caching for hand-written SQL. Diesel never caches `sql_query` statements,
//! since their text could differ per call, so every call would be parsed and planned again; the
//! service's SQL texts are constants, so they are safe to cache, keyed by their text.

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::QueryResult;

/// A query whose SQL text is the same on every call, so its prepared statement can be reused.
#[derive(Debug, Clone)]
pub struct Cached<Q>(Q);

/// Marks `query` (a `sql_query` with a constant text) as cacheable.
pub fn cached<Q>(query: Q) -> Cached<Q> {
    Cached(query)
}

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Cached<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> QueryResult<bool> {
        Ok(true)
    }
}

/// No static id: the statement cache then keys on the SQL text and bind types.
impl<Q> QueryId for Cached<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Cached<Q> {
    type SqlType = Q::SqlType;
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::sql_types::Int4;

    #[test]
    fn constant_sql_becomes_cacheable() {
        let plain = diesel::sql_query("SELECT $1").bind::<Int4, _>(1);
        assert!(!plain.is_safe_to_cache_prepared(&Pg).unwrap());
        let marked = cached(diesel::sql_query("SELECT $1").bind::<Int4, _>(1));
        assert!(marked.is_safe_to_cache_prepared(&Pg).unwrap());
    }
}
