//! Reading and writing documents: one set of queries for the pool and for a write
//! transaction, and the list filters built with `QueryBuilder`.
use sqlx::{
    Any, Arguments, Executor, QueryBuilder, Row,
    any::{AnyArguments, AnyRow},
};

use super::{Object, Result, Store, StoreError, WriteTx};

/// Which rows of a kind to list.
#[derive(Debug, Clone, Copy)]
pub enum Filter<'a> {
    All,
    Project(&'a str),
    Ref1(&'a str),
    Ref2(&'a str),
}

/// What a filtered read returns.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    /// The documents, oldest revision first.
    Bodies,
    Count,
}

impl<'a> Filter<'a> {
    /// The indexed column this filter compares, and the value it must equal.
    fn column(self) -> Option<(&'static str, &'a str)> {
        match self {
            Filter::All => None,
            Filter::Project(v) => Some(("project_id", v)),
            Filter::Ref1(v) => Some(("ref1", v)),
            Filter::Ref2(v) => Some(("ref2", v)),
        }
    }

    /// The statement reading the objects of `kind` that pass this filter.
    ///
    /// `QueryBuilder<Any>::push_bind` writes `?` placeholders, which PostgreSQL rejects (the
    /// `Any` driver passes the text through; sqlx issue 3000), so the arguments are bound
    /// up front and the text names them `$1`, `$2`, which both databases accept.
    fn query(self, read: Read, kind: &'a str) -> Result<QueryBuilder<'a, Any>> {
        let column = self.column();
        let mut args = AnyArguments::default();
        args.add(kind).map_err(sqlx::Error::Encode)?;
        if let Some((_, value)) = column {
            args.add(value).map_err(sqlx::Error::Encode)?;
        }
        let mut q = QueryBuilder::with_arguments("SELECT ", args);
        q.push(match read {
            Read::Bodies => "body",
            Read::Count => "COUNT(*)",
        });
        q.push(" FROM objects WHERE kind = $1");
        if let Some((name, _)) = column {
            q.push(" AND ").push(name).push(" = $2");
        }
        if read == Read::Bodies {
            q.push(" ORDER BY revision");
        }
        Ok(q)
    }
}

/// Decodes the document in a row's first column.
pub(super) fn decode<T: Object>(row: &AnyRow) -> Result<T> {
    let body: String = row.try_get(0)?;
    serde_json::from_str(&body).map_err(|source| StoreError::Corrupt {
        kind: T::KIND,
        source,
    })
}

async fn get<'e, T: Object>(db: impl Executor<'e, Database = Any>, id: &str) -> Result<Option<T>> {
    let row = sqlx::query("SELECT body FROM objects WHERE kind = $1 AND id = $2")
        .bind(T::KIND)
        .bind(id)
        .fetch_optional(db)
        .await?;
    row.map(|r| decode::<T>(&r)).transpose()
}

async fn list<'e, T: Object>(
    db: impl Executor<'e, Database = Any>,
    filter: Filter<'_>,
) -> Result<Vec<T>> {
    let mut q = filter.query(Read::Bodies, T::KIND)?;
    q.build().fetch_all(db).await?.iter().map(decode).collect()
}

async fn count<'e, T: Object>(
    db: impl Executor<'e, Database = Any>,
    filter: Filter<'_>,
) -> Result<i64> {
    let mut q = filter.query(Read::Count, T::KIND)?;
    Ok(q.build().fetch_one(db).await?.try_get(0)?)
}

impl Store {
    pub async fn get<T: Object>(&self, id: &str) -> Result<Option<T>> {
        get(&self.pool, id).await
    }

    pub async fn list<T: Object>(&self, filter: Filter<'_>) -> Result<Vec<T>> {
        list(&self.pool, filter).await
    }

    pub async fn count<T: Object>(&self, filter: Filter<'_>) -> Result<i64> {
        count::<T>(&self.pool, filter).await
    }
}

impl WriteTx {
    pub async fn get<T: Object>(&mut self, id: &str) -> Result<Option<T>> {
        get(&mut *self.tx, id).await
    }

    pub async fn list<T: Object>(&mut self, filter: Filter<'_>) -> Result<Vec<T>> {
        list(&mut *self.tx, filter).await
    }

    pub async fn count<T: Object>(&mut self, filter: Filter<'_>) -> Result<i64> {
        count::<T>(&mut *self.tx, filter).await
    }

    /// Inserts or replaces an object and logs the change.
    pub async fn put<T: Object>(&mut self, obj: &T) -> Result<()> {
        let body = serde_json::to_string(obj).map_err(StoreError::Encode)?;
        let (r1, r2) = obj.refs();
        let (id, project) = (obj.id(), obj.project());
        sqlx::query(
            "INSERT INTO objects (kind, id, project_id, ref1, ref2, revision, body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (kind, id) DO UPDATE SET project_id = excluded.project_id, \
             ref1 = excluded.ref1, ref2 = excluded.ref2, revision = excluded.revision, \
             body = excluded.body",
        )
        .bind(T::KIND)
        .bind(&id)
        .bind(&project)
        .bind(r1)
        .bind(r2)
        .bind(self.revision)
        .bind(&body)
        .execute(&mut *self.tx)
        .await?;
        if T::ADDRESSED {
            self.hold_address(T::KIND, &id, obj.address()).await?;
        }
        self.touched(T::KIND, &id, project);
        self.log(T::KIND, &id, "put", &body).await
    }

    /// Deletes an object (if present) and logs the change.
    pub async fn delete<T: Object>(&mut self, id: &str) -> Result<()> {
        let row =
            sqlx::query("DELETE FROM objects WHERE kind = $1 AND id = $2 RETURNING project_id")
                .bind(T::KIND)
                .bind(id)
                .fetch_optional(&mut *self.tx)
                .await?;
        if let Some(row) = row {
            self.touched(T::KIND, id, sqlx::Row::try_get(&row, 0)?);
            if T::ADDRESSED {
                self.release_address(T::KIND, id).await?;
            }
            self.log(T::KIND, id, "delete", "null").await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(f: Filter<'_>, read: Read) -> String {
        f.query(read, "port").unwrap().into_sql()
    }

    #[test]
    fn filter_statements() {
        assert_eq!(
            sql(Filter::All, Read::Bodies),
            "SELECT body FROM objects WHERE kind = $1 ORDER BY revision"
        );
        assert_eq!(
            sql(Filter::Project("p"), Read::Bodies),
            "SELECT body FROM objects WHERE kind = $1 AND project_id = $2 ORDER BY revision"
        );
        assert_eq!(
            sql(Filter::Ref2("v"), Read::Count),
            "SELECT COUNT(*) FROM objects WHERE kind = $1 AND ref2 = $2"
        );
        assert_eq!(
            sql(Filter::All, Read::Count),
            "SELECT COUNT(*) FROM objects WHERE kind = $1"
        );
    }
}
