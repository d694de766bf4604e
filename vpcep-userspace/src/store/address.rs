//! The address index: which object holds which address of a scope (`addresses`), and per
//! scope the bound below which every address is held (`address_low`), so free addresses are
//! found without reading the objects.
use sqlx::Row;

use super::{Object, Result, Store, WriteTx, objects::decode};

impl Store {
    /// Indexes the addresses of the objects of kind `T` written before the `addresses` table
    /// existed. Runs once per kind and database: the first caller claims the kind's row in
    /// `address_fill` (other replicas wait on it, then find it gone).
    pub async fn fill_addresses<T: Object>(&self) -> Result<usize> {
        let _guard = self.writer_turn().await;
        let mut tx = self.pool.begin().await?;
        let claimed = sqlx::query("DELETE FROM address_fill WHERE kind = $1")
            .bind(T::KIND)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if claimed == 0 {
            return Ok(0);
        }
        let rows = sqlx::query("SELECT body FROM objects WHERE kind = $1")
            .bind(T::KIND)
            .fetch_all(&mut *tx)
            .await?;
        let mut n = 0;
        for r in &rows {
            let obj = decode::<T>(r)?;
            if let Some((scope, ip)) = obj.address() {
                // A clash in old data keeps the first holder rather than failing the start.
                n += sqlx::query(
                    "INSERT INTO addresses (scope, ip, kind, id) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (scope, ip) DO NOTHING",
                )
                .bind(scope)
                .bind(i64::from(ip))
                .bind(T::KIND)
                .bind(obj.id())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
        }
        tx.commit().await?;
        if n > 0 {
            tracing::info!(kind = T::KIND, addresses = n, "address index filled");
        }
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

impl WriteTx {
    /// Whether `ip` is held in `scope`.
    pub async fn address_taken(&mut self, scope: &str, ip: u32) -> Result<bool> {
        Ok(
            sqlx::query("SELECT 1 FROM addresses WHERE scope = $1 AND ip = $2")
                .bind(scope)
                .bind(i64::from(ip))
                .fetch_optional(&mut *self.tx)
                .await?
                .is_some(),
        )
    }

    /// The lowest address of `first..=last` that is neither held in `scope` nor `reserved`.
    /// A scope must always be searched with the same range and reserved addresses: the
    /// search starts at the scope's recorded lower bound, below which all are taken.
    pub async fn lowest_free_address(
        &mut self,
        scope: &str,
        first: u32,
        last: u32,
        reserved: &[u32],
    ) -> Result<Option<u32>> {
        const CHUNK: usize = 64;
        let low: Option<i64> = sqlx::query("SELECT low FROM address_low WHERE scope = $1")
            .bind(scope)
            .fetch_optional(&mut *self.tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        let (first, last) = (i64::from(first), i64::from(last));
        let mut c = low.unwrap_or(first).max(first);
        // Walk the held addresses upwards from `c` in chunks until one is missing.
        'search: loop {
            let held: Vec<i64> = sqlx::query(
                "SELECT ip FROM addresses WHERE scope = $1 AND ip >= $2 ORDER BY ip LIMIT $3",
            )
            .bind(scope)
            .bind(c)
            .bind(CHUNK as i64)
            .fetch_all(&mut *self.tx)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<_, _>>()?;
            let more = held.len() == CHUNK;
            let mut held = held.into_iter().peekable();
            loop {
                if c > last {
                    return Ok(None);
                }
                if reserved.iter().any(|r| i64::from(*r) == c) {
                    c += 1;
                    continue;
                }
                match held.peek() {
                    Some(h) if *h < c => {
                        held.next();
                    }
                    Some(h) if *h == c => {
                        held.next();
                        c += 1;
                    }
                    None if more => continue 'search,
                    _ => break 'search,
                }
            }
        }
        sqlx::query(
            "INSERT INTO address_low (scope, low) VALUES ($1, $2) \
             ON CONFLICT (scope) DO UPDATE SET low = excluded.low",
        )
        .bind(scope)
        .bind(c)
        .execute(&mut *self.tx)
        .await?;
        Ok(u32::try_from(c).ok())
    }

    /// Records the address an object holds (replacing the one it held before, if different).
    pub(super) async fn hold_address(
        &mut self,
        kind: &str,
        id: &str,
        addr: Option<(String, u32)>,
    ) -> Result<()> {
        let old = sqlx::query("SELECT scope, ip FROM addresses WHERE kind = $1 AND id = $2")
            .bind(kind)
            .bind(id)
            .fetch_optional(&mut *self.tx)
            .await?
            .map(|r| -> Result<(String, i64)> { Ok((r.try_get(0)?, r.try_get(1)?)) })
            .transpose()?;
        let new = addr.map(|(s, ip)| (s, i64::from(ip)));
        if old == new {
            return Ok(());
        }
        if old.is_some() {
            self.release_address(kind, id).await?;
        }
        if let Some((scope, ip)) = new {
            sqlx::query("INSERT INTO addresses (scope, ip, kind, id) VALUES ($1, $2, $3, $4)")
                .bind(scope)
                .bind(ip)
                .bind(kind)
                .bind(id)
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    /// Frees the addresses an object holds and lowers its scope's search start to them.
    pub(super) async fn release_address(&mut self, kind: &str, id: &str) -> Result<()> {
        let freed =
            sqlx::query("DELETE FROM addresses WHERE kind = $1 AND id = $2 RETURNING scope, ip")
                .bind(kind)
                .bind(id)
                .fetch_all(&mut *self.tx)
                .await?;
        for r in freed {
            let (scope, ip): (String, i64) = (r.try_get(0)?, r.try_get(1)?);
            sqlx::query("UPDATE address_low SET low = $2 WHERE scope = $1 AND low > $2")
                .bind(&scope)
                .bind(ip)
                .execute(&mut *self.tx)
                .await?;
            // An empty scope needs no bound; dropping it also forgets a deleted subnet's.
            sqlx::query(
                "DELETE FROM address_low WHERE scope = $1 \
                 AND NOT EXISTS (SELECT 1 FROM addresses WHERE scope = $1)",
            )
            .bind(&scope)
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }
}
