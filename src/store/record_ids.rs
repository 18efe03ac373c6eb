//! Record ids (`record_id_runs`, `record_ids`): how a record's id is kept without a text column
//! and an index entry per record, how a late label finds its record, and how a second arrival of
//! an id is recognised.
//!
//! Most ids follow a pattern: the derived `<sha256 first 12>:<n>` of a record without a producer
//! id, and the `prefix` + counter most producers write (`rec-17`, `line3-000042`). An id is a
//! *prefix* and a *number* when it ends in 1 to 18 ASCII digits, written either plainly or, when
//! the digits start with a zero, zero-padded to their width. Consecutive records whose ids
//! continue one prefix with consecutive numbers written the same way are one row of
//! `record_id_runs`, whatever their count (a zero-padded run ends where the numbers need no
//! padding: `p-099` is padded to 3, `p-100` is plain). Only ids that do not end in a number go
//! to `record_ids`, one row each. So every id has exactly one form, which is what lets a lookup
//! try the run of its prefix and width, or the single ids, and be sure.

use rusqlite::{Connection, OptionalExtension, params};

use super::Result;

/// The most digits a number of an id may have (so that it fits an `i64`).
const MAX_DIGITS: usize = 18;

/// An id split into its prefix and number, and how the number is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Numbered<'a> {
    pub prefix: &'a str,
    pub number: i64,
    /// 0: plain decimal; n: zero-padded to n digits (the number had a leading zero).
    pub digits: i64,
}

/// The id as prefix and number, if it ends in a number that reads back exactly.
pub(super) fn numbered(id: &str) -> Option<Numbered<'_>> {
    let digits_start = id
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_digit())
        .last()
        .map(|(i, _)| i)?;
    let digits = &id[digits_start..];
    if digits.len() > MAX_DIGITS {
        return None;
    }
    let number: i64 = digits.parse().ok()?;
    let padded = digits.len() > 1 && digits.starts_with('0');
    Some(Numbered {
        prefix: &id[..digits_start],
        number,
        digits: if padded { digits.len() as i64 } else { 0 },
    })
}

/// One run of ids, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Run {
    pub first_seq: i64,
    pub records: i64,
    pub prefix: String,
    pub digits: i64,
    pub first_number: i64,
}

/// How a batch of records (sequence numbers `first_seq..`) keeps its ids: the runs, and the ids
/// kept one by one with their `seq`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Encoded {
    pub runs: Vec<Run>,
    pub single: Vec<(i64, String)>,
}

/// Splits the ids of consecutive records into runs and single ids.
pub(super) fn encode<'a>(first_seq: i64, ids: impl IntoIterator<Item = &'a str>) -> Encoded {
    let mut out = Encoded::default();
    for (k, id) in ids.into_iter().enumerate() {
        let seq = first_seq + k as i64;
        let Some(n) = numbered(id) else {
            out.single.push((seq, id.to_owned()));
            continue;
        };
        let continues = out.runs.last().is_some_and(|r| {
            r.first_seq + r.records == seq
                && r.prefix == n.prefix
                && r.digits == n.digits
                && r.first_number.checked_add(r.records) == Some(n.number)
        });
        match out.runs.last_mut() {
            Some(r) if continues => r.records += 1,
            _ => out.runs.push(Run {
                first_seq: seq,
                records: 1,
                prefix: n.prefix.to_owned(),
                digits: n.digits,
                first_number: n.number,
            }),
        }
    }
    out
}

/// Writes a batch's ids.
pub(super) fn insert(conn: &Connection, encoded: &Encoded) -> Result<()> {
    let mut run = conn.prepare_cached(
        "INSERT INTO record_id_runs (first_seq, records, prefix, digits, first_number)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for r in &encoded.runs {
        run.execute(params![
            r.first_seq,
            r.records,
            r.prefix,
            r.digits,
            r.first_number
        ])?;
    }
    let mut single =
        conn.prepare_cached("INSERT INTO record_ids (seq, record_id) VALUES (?1, ?2)")?;
    for (seq, id) in &encoded.single {
        single.execute(params![seq, id])?;
    }
    Ok(())
}

/// The `seq` of the kept record with this id, if any.
pub(super) fn find(conn: &Connection, id: &str) -> Result<Option<i64>> {
    let Some(n) = numbered(id) else {
        return Ok(conn
            .prepare_cached("SELECT seq FROM record_ids WHERE record_id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?);
    };
    // Runs of one prefix and width do not overlap (an id is counted once), so only the run
    // that starts at the largest number not above this one can hold it.
    let run: Option<(i64, i64, i64)> = conn
        .prepare_cached(
            "SELECT first_seq, records, first_number FROM record_id_runs
             WHERE prefix = ?1 AND digits = ?2 AND first_number <= ?3
             ORDER BY first_number DESC LIMIT 1",
        )?
        .query_row(params![n.prefix, n.digits, n.number], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    Ok(run.and_then(|(first_seq, records, first_number)| {
        let k = n.number - first_number;
        (k < records).then_some(first_seq + k)
    }))
}

/// For each id of an incoming batch, whether a kept record already has it. A run of incoming ids
/// costs one look-up per stored run it overlaps, not one per record.
pub(super) fn already_kept(conn: &Connection, ids: &[&str]) -> Result<Vec<bool>> {
    let mut kept = vec![false; ids.len()];
    // Incoming runs, as if numbered from 0: their positions in `ids`.
    let incoming = encode(0, ids.iter().copied());
    let mut overlapping = conn.prepare_cached(
        "SELECT first_number, records FROM record_id_runs
         WHERE prefix = ?1 AND digits = ?2 AND first_number <= ?3
         ORDER BY first_number DESC",
    )?;
    for run in &incoming.runs {
        let last = run.first_number + run.records - 1;
        let mut rows = overlapping.query(params![run.prefix, run.digits, last])?;
        while let Some(row) = rows.next()? {
            let (first, records): (i64, i64) = (row.get(0)?, row.get(1)?);
            let end = first + records - 1;
            if end < run.first_number {
                break; // runs of one prefix do not overlap: the earlier ones end earlier still
            }
            for number in first.max(run.first_number)..=end.min(last) {
                kept[(run.first_seq + number - run.first_number) as usize] = true;
            }
        }
    }
    let mut single = conn.prepare_cached("SELECT 1 FROM record_ids WHERE record_id = ?1")?;
    for (at, id) in &incoming.single {
        if single.exists([id])? {
            kept[*at as usize] = true;
        }
    }
    Ok(kept)
}

/// Deletes the ids of records with `seq < before`. A run reaching past `before` keeps its
/// remaining records.
pub(super) fn delete_before(conn: &Connection, before: i64) -> Result<()> {
    conn.prepare_cached("DELETE FROM record_ids WHERE seq < ?1")?
        .execute([before])?;
    // A run that straddles the cut starts again at `before`.
    conn.prepare_cached(
        "UPDATE record_id_runs
         SET first_number = first_number + (?1 - first_seq),
             records = records - (?1 - first_seq),
             first_seq = ?1
         WHERE first_seq < ?1 AND first_seq + records > ?1",
    )?
    .execute([before])?;
    conn.prepare_cached("DELETE FROM record_id_runs WHERE first_seq < ?1")?
        .execute([before])?;
    Ok(())
}

/// After the migration that introduced runs: the ids the old `records` table kept as text, in
/// `record_ids`, move into runs wherever they follow the pattern, so that every id has its one
/// form. Reads and rewrites every old id once.
pub(super) fn canonicalise(conn: &Connection) -> Result<()> {
    let rows: Vec<(i64, String)> = {
        let mut stmt = conn.prepare("SELECT seq, record_id FROM record_ids ORDER BY seq")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    // Consecutive `seq`s only: a gap (records deleted by retention) starts a new batch.
    let mut batches: Vec<(i64, Vec<&str>)> = Vec::new();
    let mut next = None;
    for (seq, id) in &rows {
        match batches.last_mut() {
            Some((_, ids)) if next == Some(*seq) => ids.push(id),
            _ => batches.push((*seq, vec![id])),
        }
        next = Some(seq + 1);
    }
    conn.execute("DELETE FROM record_ids", [])?;
    for (first_seq, ids) in batches {
        insert(conn, &encode(first_seq, ids))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The id a run gives its `k`-th record.
    fn format_id(prefix: &str, digits: i64, number: i64) -> String {
        if digits > 0 {
            format!("{prefix}{number:0width$}", width = digits as usize)
        } else {
            format!("{prefix}{number}")
        }
    }

    #[test]
    fn ids_split_into_a_prefix_and_a_number_that_reads_back() {
        let n = numbered("rec-17").unwrap();
        assert_eq!((n.prefix, n.number, n.digits), ("rec-", 17, 0));
        let n = numbered("line3-000042").unwrap();
        assert_eq!((n.prefix, n.number, n.digits), ("line3-", 42, 6));
        assert_eq!(numbered("0").unwrap().digits, 0);
        assert_eq!(numbered("00").unwrap().digits, 2);
        let uuid = numbered("3f2504e0-4f89-11d3-9a0c-0305e82c3301").unwrap();
        assert_eq!(
            (uuid.prefix, uuid.number),
            ("3f2504e0-4f89-11d3-9a0c-0305e82c", 3301)
        );
        assert_eq!(
            format_id(uuid.prefix, uuid.digits, uuid.number),
            "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
        );
        assert!(numbered("abc").is_none());
        assert!(numbered("").is_none());
        assert!(numbered("x1234567890123456789").is_none(), "19 digits");
        assert_eq!(format_id("line3-", 6, 42), "line3-000042");
        assert_eq!(format_id("a", 0, 7), "a7");
    }

    #[test]
    fn consecutive_ids_make_runs_and_the_rest_stay_single() {
        let ids = [
            "r-8",
            "r-9",
            "r-10",
            "r-11", // one plain run across a digit
            "p-098",
            "p-099",
            "p-100", // padded while the numbers need it, then plain
            "p-101",
            "uuid-like-id",
            "r-12", // r-12 does not continue: not the next record
            "x-0009",
            "x-0010",
            "x-10000", // the padded run cannot widen
        ];
        let e = encode(100, ids);
        let runs: Vec<(i64, i64, &str, i64, i64)> = e
            .runs
            .iter()
            .map(|r| {
                (
                    r.first_seq,
                    r.records,
                    r.prefix.as_str(),
                    r.digits,
                    r.first_number,
                )
            })
            .collect();
        assert_eq!(
            runs,
            [
                (100, 4, "r-", 0, 8),
                (104, 2, "p-", 3, 98),
                (106, 2, "p-", 0, 100),
                (109, 1, "r-", 0, 12),
                (110, 2, "x-", 4, 9),
                (112, 1, "x-", 0, 10000),
            ]
        );
        assert_eq!(e.single, [(108, "uuid-like-id".to_string())]);
        // Every id comes back from its run.
        for r in &e.runs {
            for k in 0..r.records {
                let id = format_id(&r.prefix, r.digits, r.first_number + k);
                assert_eq!(id, ids[(r.first_seq + k - 100) as usize]);
            }
        }
    }

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE record_id_runs (first_seq INTEGER PRIMARY KEY, records INTEGER NOT NULL,
                 prefix TEXT NOT NULL, digits INTEGER NOT NULL, first_number INTEGER NOT NULL);
             CREATE INDEX record_id_runs_by_id ON record_id_runs (prefix, digits, first_number);
             CREATE TABLE record_ids (seq INTEGER PRIMARY KEY, record_id TEXT NOT NULL UNIQUE);",
        )
        .unwrap();
        conn
    }

    #[test]
    fn a_stored_id_is_found_and_recognised_when_it_comes_again() {
        let conn = db();
        let first: Vec<String> = (0..1000).map(|n| format!("rec-{n}")).collect();
        insert(&conn, &encode(1, first.iter().map(String::as_str))).unwrap();
        insert(&conn, &encode(1001, ["odd one", "rec-5000"])).unwrap();
        assert_eq!(find(&conn, "rec-0").unwrap(), Some(1));
        assert_eq!(find(&conn, "rec-999").unwrap(), Some(1000));
        assert_eq!(find(&conn, "rec-1000").unwrap(), None);
        assert_eq!(find(&conn, "rec-5000").unwrap(), Some(1002));
        assert_eq!(find(&conn, "odd one").unwrap(), Some(1001));
        assert_eq!(
            find(&conn, "rec-0999").unwrap(),
            None,
            "another way of writing"
        );

        let again = [
            "rec-998", "rec-999", "rec-1000", "odd one", "new", "rec-5000", "rec-4999",
        ];
        assert_eq!(
            already_kept(&conn, &again).unwrap(),
            [true, true, false, true, false, true, false]
        );
    }

    #[test]
    fn retention_cuts_a_run_where_it_deletes() {
        let conn = db();
        let ids: Vec<String> = (0..10).map(|n| format!("a{n}")).collect();
        insert(&conn, &encode(1, ids.iter().map(String::as_str))).unwrap();
        insert(&conn, &encode(11, ["z"])).unwrap();
        delete_before(&conn, 5).unwrap();
        assert_eq!(find(&conn, "a3").unwrap(), None);
        assert_eq!(find(&conn, "a4").unwrap(), Some(5));
        assert_eq!(find(&conn, "a9").unwrap(), Some(10));
        delete_before(&conn, 12).unwrap();
        assert_eq!(find(&conn, "a9").unwrap(), None);
        assert_eq!(find(&conn, "z").unwrap(), None);
    }

    #[test]
    fn ids_kept_one_by_one_move_into_runs() {
        let conn = db();
        for (seq, id) in [
            (1, "r1"),
            (2, "r2"),
            (3, "r3"),
            (4, "text"),
            (7, "r4"),
            (8, "r5"),
        ] {
            conn.execute("INSERT INTO record_ids VALUES (?1, ?2)", params![seq, id])
                .unwrap();
        }
        canonicalise(&conn).unwrap();
        let runs: i64 = conn
            .query_row("SELECT COUNT(*) FROM record_id_runs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(runs, 2, "r1..r3, and r4..r5 after the gap");
        for (seq, id) in [(1, "r1"), (3, "r3"), (4, "text"), (7, "r4"), (8, "r5")] {
            assert_eq!(find(&conn, id).unwrap(), Some(seq), "{id}");
        }
    }
}
