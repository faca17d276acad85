//! The rows of one domain waiting for ClickHouse, with each row's boundaries:
//! where it ends in the RowBinary buffer, its partition, and the Kafka record it
//! came from. [`store`] groups the rows into inserts ClickHouse accepts (at most
//! [`MAX_PARTITIONS_PER_INSERT`] partitions each) and, when ClickHouse refuses
//! rows for good, splits inserts in halves until the refused rows are alone, so
//! that every other row is stored and the refused ones can be dead-lettered.

use std::collections::HashMap;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use pulse_ops::Shutdown;

use pulse_clickhouse::schema::MAX_PARTITIONS_PER_INSERT;
use pulse_clickhouse::writer::{ErrorKind, WriteError, Writer};

/// The Kafka record a row was decoded from (its topic is the batch's), kept to
/// dead-letter it verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// One row of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// End of the row in the batch's RowBinary buffer (it starts where the previous row ends).
    pub end: usize,
    /// Its partition in the table (`RawTable::partition_key`); `None`: table not partitioned.
    pub partition_key: Option<u32>,
    pub source: SourceRecord,
}

/// Rows being collected: encode a row into [`buf`](Self::buf), then [`push`](Self::push) it.
#[derive(Debug, Default)]
pub struct Rows {
    buf: BytesMut,
    rows: Vec<Row>,
}

impl Rows {
    pub fn with_capacity(bytes: usize) -> Rows {
        Rows { buf: BytesMut::with_capacity(bytes), rows: Vec::new() }
    }

    /// The RowBinary buffer to encode the next row into.
    pub fn buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Records the row just encoded into the buffer.
    pub fn push(&mut self, partition_key: Option<u32>, source: SourceRecord) {
        self.rows.push(Row { end: self.buf.len(), partition_key, source });
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Takes the rows collected so far, leaving this empty (and its buffer reusable).
    pub fn take(&mut self) -> Batch {
        Batch { buf: self.buf.split().freeze(), rows: std::mem::take(&mut self.rows) }
    }
}

/// Rows ready for ClickHouse.
#[derive(Debug, Clone)]
pub struct Batch {
    buf: Bytes,
    rows: Vec<Row>,
}

impl Batch {
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    fn span(&self, i: usize) -> Range<usize> {
        let start = if i == 0 { 0 } else { self.rows[i - 1].end };
        start..self.rows[i].end
    }

    /// The RowBinary body of the rows `idx` (ascending): a slice of the buffer when
    /// they are consecutive, a copy otherwise.
    pub fn body(&self, idx: &[usize]) -> Bytes {
        let (Some(&first), Some(&last)) = (idx.first(), idx.last()) else { return Bytes::new() };
        if last - first + 1 == idx.len() {
            return self.buf.slice(self.span(first).start..self.span(last).end);
        }
        let mut body = BytesMut::with_capacity(idx.iter().map(|&i| self.span(i).len()).sum());
        for &i in idx {
            body.extend_from_slice(&self.buf[self.span(i)]);
        }
        body.freeze()
    }

    fn partitions(&self, idx: &[usize]) -> Vec<Option<u32>> {
        let mut keys: Vec<Option<u32>> = idx.iter().map(|&i| self.rows[i].partition_key).collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }
}

/// Groups rows (given by their partition keys) into inserts of at most `max`
/// distinct partitions each; rows keep their order inside an insert. Consecutive
/// days go together, so that a batch spanning N days makes ceil(N / max) inserts.
pub fn group_by_partition(keys: &[Option<u32>], max: usize) -> Vec<Vec<usize>> {
    let mut distinct = keys.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let max = max.max(1);
    if distinct.len() <= max {
        return if keys.is_empty() { Vec::new() } else { vec![(0..keys.len()).collect()] };
    }
    let group_of: HashMap<Option<u32>, usize> = distinct.iter().enumerate().map(|(i, k)| (*k, i / max)).collect();
    let mut groups = vec![Vec::new(); distinct.len().div_ceil(max)];
    for (i, k) in keys.iter().enumerate() {
        if let Some(g) = group_of.get(k).and_then(|&g| groups.get_mut(g)) {
            g.push(i);
        }
    }
    groups
}

/// Splits rows in two halves: by row count, or (`by_partition`) by partition,
/// the first half of the distinct partitions against the rest. Either half may
/// be empty only when there is nothing to split.
fn halves(batch: &Batch, idx: Vec<usize>, by_partition: bool) -> (Vec<usize>, Vec<usize>) {
    if by_partition {
        let keys = batch.partitions(&idx);
        let Some(&pivot) = keys.get(keys.len() / 2) else { return (idx, Vec::new()) };
        idx.into_iter().partition(|&i| batch.rows[i].partition_key < pivot)
    } else {
        let mut first = idx;
        let second = first.split_off(first.len() / 2);
        (first, second)
    }
}

/// A row ClickHouse refused for good, and its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Index of the row in the batch.
    pub row: usize,
    /// ClickHouse's error code and message.
    pub reason: String,
}

/// What [`store`] did with a batch.
#[derive(Debug, Default)]
pub struct Stored {
    /// Rows ClickHouse acknowledged.
    pub rows: usize,
    /// Inserts it took (acknowledged or not).
    pub inserts: usize,
    pub refused: Vec<Refused>,
}

/// Stores `batch` into `table` (`sql`: its RowBinary INSERT): every row is either
/// acknowledged by ClickHouse or returned as refused. Transient errors are retried
/// (see [`Writer::insert_or_refuse`]); the only error returned is
/// [`WriteError::ShuttingDown`]. A row stored by an insert that failed later (an
/// insert larger than one block) may be stored twice: the raw tables' keys collapse that.
pub async fn store(writer: &Writer, table: &str, sql: &str, batch: &Batch, shutdown: &Shutdown) -> Result<Stored, WriteError> {
    let keys: Vec<Option<u32>> = batch.rows.iter().map(|r| r.partition_key).collect();
    let mut pending = group_by_partition(&keys, MAX_PARTITIONS_PER_INSERT);
    pending.reverse();
    let mut out = Stored::default();
    while let Some(idx) = pending.pop() {
        if idx.is_empty() {
            continue;
        }
        let partitions = batch.partitions(&idx).len();
        out.inserts += 1;
        let error = match writer.insert_or_refuse(table, sql, batch.body(&idx), idx.len(), partitions, shutdown).await {
            Ok(()) => {
                out.rows += idx.len();
                continue;
            }
            Err(e) => e,
        };
        let (first, second) = match error.kind() {
            ErrorKind::RowsRefused if idx.len() == 1 => {
                let row = idx[0];
                let src = &batch.rows[row].source;
                tracing::warn!(table, partition = src.partition, offset = src.offset, "clickhouse refused a row: {error}");
                out.refused.push(Refused { row, reason: error.to_string() });
                continue;
            }
            ErrorKind::RowsRefused => halves(batch, idx, false),
            ErrorKind::TooManyPartitions if partitions > 1 => halves(batch, idx, true),
            _ => return Err(error),
        };
        tracing::debug!(table, rows = first.len() + second.len(), "insert refused, trying its halves: {error}");
        pending.push(second);
        pending.push(first);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(keys: &[Option<u32>]) -> Batch {
        let mut rows = Rows::default();
        for (i, k) in keys.iter().enumerate() {
            rows.buf().extend_from_slice(&[i as u8; 3]);
            rows.push(*k, SourceRecord { partition: 0, offset: i as i64, key: None, payload: None });
        }
        rows.take()
    }

    #[test]
    fn few_partitions_make_one_insert() {
        assert_eq!(group_by_partition(&[], 100), Vec::<Vec<usize>>::new());
        assert_eq!(group_by_partition(&[None, None, None], 100), vec![vec![0, 1, 2]]);
        let keys: Vec<Option<u32>> = (0..300).map(|i| Some(20_240_000 + i % 100)).collect();
        assert_eq!(group_by_partition(&keys, 100), vec![(0..300).collect::<Vec<_>>()]);
    }

    #[test]
    fn many_partitions_are_grouped_under_the_limit() {
        // 150 days, rows interleaved, three rows a day.
        let keys: Vec<Option<u32>> = (0..450).map(|i| Some(1_000 + (i * 7) % 150)).collect();
        let groups = group_by_partition(&keys, 100);
        assert_eq!(groups.len(), 2);
        let mut all: Vec<usize> = groups.concat();
        all.sort_unstable();
        assert_eq!(all, (0..450).collect::<Vec<_>>(), "every row exactly once");
        for g in &groups {
            assert!(g.windows(2).all(|w| w[0] < w[1]), "rows keep their order");
            let mut days: Vec<_> = g.iter().map(|&i| keys[i]).collect();
            days.sort_unstable();
            days.dedup();
            assert!(days.len() <= 100);
        }
        // Consecutive days together: 100 days then 50.
        assert_eq!(groups[0].len(), 300);
        assert!(groups[0].iter().all(|&i| keys[i] < Some(1_100)));
        assert_eq!(group_by_partition(&keys, 7).len(), 22);
        assert_eq!(group_by_partition(&keys, 0).len(), 150);
    }

    #[test]
    fn bodies_follow_row_boundaries() {
        let b = batch(&[None; 5]);
        assert_eq!(&b.body(&[0, 1, 2, 3, 4])[..], &[0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]);
        assert_eq!(&b.body(&[1, 2])[..], &[1, 1, 1, 2, 2, 2]);
        assert_eq!(&b.body(&[0, 4])[..], &[0, 0, 0, 4, 4, 4]);
        assert_eq!(&b.body(&[3])[..], &[3, 3, 3]);
        assert!(b.body(&[]).is_empty());
    }

    #[test]
    fn halves_split_rows_or_partitions() {
        let b = batch(&[Some(1), Some(2), Some(1), Some(3), Some(4), Some(2)]);
        assert_eq!(halves(&b, vec![0, 1, 2, 3, 4, 5], false), (vec![0, 1, 2], vec![3, 4, 5]));
        assert_eq!(halves(&b, vec![0, 1, 2, 3, 4, 5], true), (vec![0, 1, 2, 5], vec![3, 4]));
        assert_eq!(halves(&b, vec![1, 5], true), (vec![], vec![1, 5]));
        assert_eq!(halves(&b, vec![4], false), (vec![], vec![4]));
    }

    #[test]
    fn rows_take_leaves_an_empty_collector() {
        let mut rows = Rows::with_capacity(16);
        rows.buf().extend_from_slice(b"abc");
        rows.push(Some(1), SourceRecord { partition: 2, offset: 3, key: Some(b"k".to_vec()), payload: None });
        assert_eq!(rows.len(), 1);
        let b = rows.take();
        assert!(rows.is_empty());
        assert_eq!(b.rows()[0].end, 3);
        assert_eq!(b.rows()[0].source.offset, 3);
        rows.buf().extend_from_slice(b"de");
        rows.push(None, SourceRecord { partition: 0, offset: 4, key: None, payload: None });
        assert_eq!(rows.take().rows()[0].end, 2, "ends are relative to the new buffer");
    }
}
