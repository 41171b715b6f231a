//! The outbox: durable records go into a Redis Stream in the request path (one XADD, no database
//! round trip), and writers drain it into the database.
//!
//! A writer is one consumer of the group `database` (every gateway process runs one). It reads a
//! batch, commits it in one transaction, then acknowledges and deletes the entries. A writer that
//! dies between its read and its acknowledgement leaves the entries pending; another writer (or
//! itself, restarted) takes them over with XAUTOCLAIM once they have been idle `claim_idle`, and
//! writes them again. Writing twice changes nothing ([`crate::records`]), so every record lands
//! exactly once.
//!
//! A batch the database refuses is retried with backoff; after [`SPLIT_AFTER`] failures its
//! entries are written one by one, and an entry that fails alone goes to the dead-letter stream
//! (`tg:{ev:outbox}:dead`), so one bad record cannot hold up the rest.
//!
//! Records pushed while an entry is on its way to Redis go together in the next entry (group
//! commit): one XADD per round trip however many requests end meanwhile, and no wait added to a
//! push when nothing else is in flight.
//!
//! When Redis does not take an entry (down, failing over), [`Outbox::push`] writes straight to
//! the database instead (slower, but nothing is lost).

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tollgate_redis::{Consumer, Event, EventBus, EventConfig, Keys, Redis, StartAt};

use crate::db::Database;
use crate::records::Record;
use crate::{Error, Result};

/// The stream (under the event bus's keys: `tg:{ev:outbox}`).
pub const STREAM: &str = "outbox";
/// The consumer group of the writers.
pub const GROUP: &str = "database";
/// Failed commits of a whole batch before its entries are written one by one.
pub const SPLIT_AFTER: u32 = 3;
/// Records gathered into one entry, at most.
const ENTRY_RECORDS: usize = 256;

/// Timings and sizes of the outbox.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// Entries per batch (an entry holds the records of one request).
    pub batch: usize,
    /// A pending entry idle this long is taken over by another writer.
    pub claim_idle: Duration,
    /// How long an idle writer waits for new entries per read.
    pub block: Duration,
    /// How long a writer that found less than a batch waits before reading again (a quiet
    /// gateway's records are committed in batches too).
    pub linger: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            batch: 500,
            claim_idle: Duration::from_secs(30),
            block: Duration::from_secs(1),
            linger: Duration::from_millis(25),
        }
    }
}

/// The producing side, cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox {
    bus: EventBus,
    /// A writer's read, at most.
    batch: usize,
    linger: Duration,
    /// To the task that gathers pushed records into entries.
    queue: mpsc::UnboundedSender<Pushed>,
}

/// Records pushed, and their pusher waiting to hear where they went.
#[derive(Debug)]
struct Pushed {
    records: Vec<Record>,
    /// Who waits to hear where they went (none: [`Outbox::send`]).
    done: Option<oneshot::Sender<std::result::Result<(), String>>>,
}

impl Outbox {
    /// An outbox on `redis`; `direct` takes the records when Redis cannot. Starts the task that
    /// gathers records into entries (it ends with the last clone of the outbox).
    pub fn new(redis: Redis, keys: Keys, config: &OutboxConfig, direct: Option<Database>) -> Self {
        let bus = EventBus::new(
            redis,
            keys,
            EventConfig {
                // Entries are deleted once written; this bounds a backlog, it is not retention.
                max_len: 50_000_000,
                // A backlog waits for a writer however long that takes.
                retention: None,
                max_deliveries: 50,
                claim_idle: config.claim_idle,
                block: config.block,
                batch: config.batch.max(1),
            },
        );
        let (queue, pushed) = mpsc::unbounded_channel();
        tokio::spawn(gather(bus.clone(), direct, pushed));
        Outbox {
            bus,
            batch: config.batch.max(1),
            linger: config.linger,
            queue,
        }
    }

    /// Binds this Redis's outbox to `db`: the first database bound stands. Replicas pointed at
    /// different databases would each write part of the others' records; the second one is
    /// refused here, with what to do. Redis or the database unreachable: nothing to compare, it
    /// goes on.
    pub async fn bind(&self, db: &Database) -> Result<()> {
        let identity = match db.identity().await {
            Ok(identity) => identity,
            Err(e) => {
                tracing::warn!(error = %e, "database unreachable: could not check which database the outbox belongs to");
                return Ok(());
            }
        };
        match self.bus.bind_sink(STREAM, &identity).await {
            Ok(bound) if bound == identity => Ok(()),
            Ok(bound) => Err(Error::Config(format!(
                "this Redis's outbox belongs to another database ({bound}; this one is \
                 {identity}): point every replica at one database, or give this one its own \
                 redis.key_prefix"
            ))),
            Err(e) if e.is_unavailable() => {
                tracing::warn!(error = %e, "could not check which database the outbox belongs to");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Queues `records` (in one entry, so written together); returns once they are in the
    /// outbox, or in the database when Redis did not take them.
    pub async fn push(&self, records: Vec<Record>) -> Result<()> {
        self.enqueue(records).await
    }

    /// [`Outbox::push`] in two steps: `records` are queued now, behind every record queued
    /// before them in this process, and the future returned says where they went.
    pub fn enqueue(&self, records: Vec<Record>) -> impl Future<Output = Result<()>> + use<> {
        let queued = if records.is_empty() {
            None
        } else {
            let (done, outcome) = oneshot::channel();
            let sent = self.queue.send(Pushed {
                records,
                done: Some(done),
            });
            Some(sent.map(|()| outcome))
        };
        async move {
            let outcome = match queued {
                None => return Ok(()),
                Some(Err(_)) => return Err(Error::Config("the outbox has stopped".into())),
                Some(Ok(outcome)) => outcome,
            };
            match outcome.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(Error::Config(e)),
                Err(_) => Err(Error::Config("the outbox has stopped".into())),
            }
        }
    }

    /// Returns once every record queued in this process before the call is in the outbox (or
    /// in the database, or reported lost): what a reader that has seen an answer waits for
    /// before it looks for the answer's records.
    pub async fn flushed(&self) {
        let (done, outcome) = oneshot::channel();
        let marker = Pushed {
            records: Vec::new(),
            done: Some(done),
        };
        if self.queue.send(marker).is_ok() {
            let _ = outcome.await;
        }
    }

    /// [`Outbox::push`] without waiting: the records go with the next entry, and a failure to
    /// keep them anywhere is logged. For records whose caller has nothing to do either way.
    pub fn send(&self, records: Vec<Record>) {
        if records.is_empty() {
            return;
        }
        if self
            .queue
            .send(Pushed {
                records,
                done: None,
            })
            .is_err()
        {
            tracing::error!("durable records lost: the outbox has stopped");
        }
    }

    /// Entries written to the outbox and not yet committed by a writer (pending or unread).
    pub async fn backlog(&self) -> Result<u64> {
        Ok(self.bus.backlog(STREAM).await?)
    }

    /// A writer named `name` into `db` (the group is created if missing).
    pub async fn writer(&self, db: Database, name: &str) -> Result<Writer> {
        self.bus
            .create_group(STREAM, GROUP, StartAt::Beginning)
            .await?;
        let consumer = self.bus.consumer(STREAM, GROUP, name).await?;
        Ok(Writer {
            consumer,
            db,
            batch: self.batch,
            linger: self.linger,
        })
    }
}

/// Gathers what is pushed into entries: the first records waiting, and every other push queued
/// by then (up to [`ENTRY_RECORDS`]), in one XADD; then tells each pusher. Once Redis has failed
/// to take an entry, everything queued goes to the database at once until Redis takes one again:
/// records wait one failed attempt, however many arrive meanwhile.
async fn gather(
    bus: EventBus,
    direct: Option<Database>,
    mut pushed: mpsc::UnboundedReceiver<Pushed>,
) {
    let mut redis_failed = false;
    while let Some(first) = pushed.recv().await {
        let most = if redis_failed {
            usize::MAX
        } else {
            ENTRY_RECORDS
        };
        let mut records = first.records;
        let mut waiting = vec![first.done];
        while records.len() < most {
            match pushed.try_recv() {
                Ok(more) => {
                    records.extend(more.records);
                    waiting.push(more.done);
                }
                Err(_) => break,
            }
        }
        // Nothing but flush markers: nothing to write, and every entry before them is written.
        let outcome = if records.is_empty() {
            Ok(())
        } else {
            write(&bus, direct.as_ref(), records, &mut redis_failed).await
        };
        if let Err(e) = &outcome
            && waiting.iter().any(Option::is_none)
        {
            tracing::error!(error = %e, "durable records lost: neither the outbox nor the database took them");
        }
        for done in waiting.into_iter().flatten() {
            let _ = done.send(outcome.clone());
        }
    }
}

/// Writes one entry of `records` to the outbox, or to `direct` when Redis does not take it.
async fn write(
    bus: &EventBus,
    direct: Option<&Database>,
    records: Vec<Record>,
    redis_failed: &mut bool,
) -> std::result::Result<(), String> {
    match serde_json::to_vec(&records) {
        Ok(json) => match bus.publish(STREAM, &[("r", &json)]).await {
            Ok(_) => {
                *redis_failed = false;
                Ok(())
            }
            // Whatever Redis's trouble (down, failing over, refusing), the records are kept.
            Err(e) => {
                *redis_failed = true;
                match direct {
                    Some(db) => {
                        tracing::warn!(error = %e, "outbox unavailable; writing records straight to the database");
                        db.write(records).await.map_err(|e| e.to_string())
                    }
                    None => Err(Error::from(e).to_string()),
                }
            }
        },
        Err(e) => Err(e.to_string()),
    }
}

/// Entries read and not yet acknowledged.
#[derive(Debug, Default)]
pub struct Batch {
    entries: Vec<(Event, Vec<Record>)>,
}

impl Batch {
    /// Records in the batch.
    pub fn records(&self) -> usize {
        self.entries.iter().map(|(_, r)| r.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// One writer: read, commit, acknowledge.
#[derive(Debug)]
pub struct Writer {
    consumer: Consumer,
    db: Database,
    /// Entries a read takes at most.
    batch: usize,
    linger: Duration,
}

impl Writer {
    /// Reads the next batch: entries other writers left idle first, else new ones (waiting up to
    /// the configured block). Entries that are not records go to the dead-letter stream.
    pub async fn take(&mut self) -> Result<Batch> {
        let mut batch = Batch::default();
        for event in self.consumer.next().await? {
            match event
                .field("r")
                .and_then(|b| serde_json::from_slice::<Vec<Record>>(b).ok())
            {
                Some(records) => batch.entries.push((event, records)),
                None => self.bury(&event, "not a list of records").await?,
            }
        }
        Ok(batch)
    }

    /// Commits the batch in one transaction, retrying with backoff; after [`SPLIT_AFTER`]
    /// failures, entry by entry (an entry that fails alone is dead-lettered and dropped from
    /// the batch).
    pub async fn commit(&self, batch: &mut Batch) -> Result<()> {
        let mut wait = Duration::from_millis(100);
        for attempt in 1.. {
            let records: Vec<Record> = batch
                .entries
                .iter()
                .flat_map(|(_, r)| r.iter().cloned())
                .collect();
            match self.db.write(records).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt >= SPLIT_AFTER => {
                    tracing::warn!(error = %e, "outbox batch refused again; writing its entries one by one");
                    return self.commit_one_by_one(batch).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "outbox batch not committed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
        Ok(())
    }

    async fn commit_one_by_one(&self, batch: &mut Batch) -> Result<()> {
        let mut kept = Vec::with_capacity(batch.entries.len());
        for (event, records) in std::mem::take(&mut batch.entries) {
            match self.db.write(records.clone()).await {
                Ok(()) => kept.push((event, records)),
                Err(e) if e.is_refused() => {
                    // An entry holds the records of many requests: the others land, and the
                    // entry goes to the dead letters whole (writing a record twice changes
                    // nothing, so replaying it is safe).
                    let (mut written, mut refused) = (Vec::new(), Vec::new());
                    for record in records {
                        match self.db.write(vec![record.clone()]).await {
                            Ok(()) => written.push(record),
                            Err(e) if e.is_refused() => {
                                refused.push(format!("{}: {e}", record.key()));
                            }
                            Err(e) => {
                                batch.entries = kept;
                                return Err(e);
                            }
                        }
                    }
                    if refused.is_empty() {
                        kept.push((event, written));
                    } else {
                        self.bury(&event, &refused.join("; ")).await?;
                    }
                }
                // The database itself is failing: leave the rest pending for a later attempt.
                Err(e) => {
                    batch.entries = kept;
                    return Err(e);
                }
            }
        }
        batch.entries = kept;
        Ok(())
    }

    /// Moves an entry to the dead letters and out of the outbox (it is not backlog any more).
    async fn bury(&self, event: &Event, reason: &str) -> Result<()> {
        self.consumer.dead_letter(event, reason).await?;
        self.consumer
            .ack_and_delete(std::slice::from_ref(&event.id))
            .await?;
        Ok(())
    }

    /// Acknowledges and deletes the batch's entries (after [`Writer::commit`]).
    pub async fn ack(&self, batch: Batch) -> Result<()> {
        let ids: Vec<String> = batch.entries.into_iter().map(|(e, _)| e.id).collect();
        self.consumer.ack_and_delete(&ids).await?;
        Ok(())
    }

    /// One read, commit and acknowledgement; returns the entries and the records written.
    async fn step_entries(&mut self) -> Result<(usize, usize)> {
        let mut batch = self.take().await?;
        if batch.is_empty() {
            return Ok((0, 0));
        }
        self.commit(&mut batch).await?;
        let (entries, records) = (batch.entries.len(), batch.records());
        self.ack(batch).await?;
        Ok((entries, records))
    }

    /// One read, commit and acknowledgement; returns the records written.
    pub async fn step(&mut self) -> Result<usize> {
        Ok(self.step_entries().await?.1)
    }

    /// Writes until an error, which it returns (Redis away, or the group gone with a flushed or
    /// restarted Redis): the caller makes a new writer, recreating the group. After a read of
    /// less than a batch it lingers, so records arriving one by one are committed together.
    pub async fn run(mut self) -> Error {
        loop {
            match self.step_entries().await {
                Err(e) => return e,
                Ok((entries, _)) if entries > 0 && entries < self.batch => {
                    tokio::time::sleep(self.linger).await;
                }
                Ok(_) => {}
            }
        }
    }
}
