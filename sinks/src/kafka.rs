//! Kafka publisher: one event per resource.
//!
//! Topics are `<prefix>.<ResourceType>` (created on first use, since brokers such as tansu do
//! not auto-create), keys `<ResourceType>/<id>`, values the resource JSON bytes exactly as
//! received. Headers follow the CloudEvents 1.0 Kafka protocol binding in binary mode
//! (`ce_specversion`, `ce_id`, `ce_source`, `ce_type`, `ce_subject`, `ce_time`,
//! `content-type`) plus lineage (`fhirhose_raw_key`, `fhirhose_line`, `fhirhose_run_id`).
//!
//! Guarantees (see also the crate docs): the producer is idempotent with `acks=all`, so
//! librdkafka's own retries never duplicate or reorder within a partition. Each send is
//! counted in a [`DeliveryTracker`]; the caller waits for the tracker before it declares a file
//! done. `QueueFull` is backpressure: the send waits and retries, keeping the record.
//! Fatal errors (a message over the size limit, an unknown topic that cannot be created,
//! authorization failures) fail the tracker with the error's name, never with content.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

/// Default linger: 20 ms lets librdkafka fill batches without adding visible latency.
pub const fn default_linger_ms() -> u32 {
    20
}

/// Messages queued in librdkafka at most before `send` waits (backpressure bound).
pub const fn default_queue_max_messages() -> u32 {
    100_000
}

/// Bytes queued in librdkafka at most (64 MiB, instead of librdkafka's 1 GiB default, keeps
/// the pipeline's peak memory flat).
pub const fn default_queue_max_kbytes() -> u32 {
    64 * 1024
}

/// Largest message accepted (8 MiB: resources with inline attachments exceed Kafka's 1 MB
/// default; the broker's own limit must allow it too).
pub const fn default_message_max_bytes() -> u32 {
    8 * 1024 * 1024
}

/// Partitions for topics fhirhose creates.
pub const fn default_partitions() -> i32 {
    3
}

/// Publisher settings.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `host:port[,host:port]`.
    pub brokers: String,
    /// Topic prefix (`fhir` → `fhir.Patient`).
    pub topic_prefix: String,
    /// `zstd`, `lz4`, `snappy`, `gzip` or `none`.
    pub compression: String,
    /// See [`default_linger_ms`].
    pub linger_ms: u32,
    /// See [`default_queue_max_messages`].
    pub queue_max_messages: u32,
    /// See [`default_queue_max_kbytes`].
    pub queue_max_kbytes: u32,
    /// See [`default_message_max_bytes`].
    pub message_max_bytes: u32,
    /// See [`default_partitions`].
    pub partitions: i32,
    /// Replication factor for created topics.
    pub replication: i32,
    /// How long to wait for the broker on connect.
    pub connect_timeout: Duration,
    /// Create missing topics with the admin API (brokers such as tansu do not auto-create);
    /// off for clusters that auto-create (librdkafka's mock cluster).
    pub create_topics: bool,
    /// Extra librdkafka properties (e.g. `security.protocol`), applied last.
    pub extra: Vec<(String, String)>,
}

impl KafkaConfig {
    /// Defaults for `brokers`.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic_prefix: "fhir".into(),
            compression: "zstd".into(),
            linger_ms: default_linger_ms(),
            queue_max_messages: default_queue_max_messages(),
            queue_max_kbytes: default_queue_max_kbytes(),
            message_max_bytes: default_message_max_bytes(),
            partitions: default_partitions(),
            replication: 1,
            connect_timeout: Duration::from_secs(10),
            create_topics: true,
            extra: Vec::new(),
        }
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &self.compression)
            .set("linger.ms", self.linger_ms.to_string())
            .set(
                "queue.buffering.max.messages",
                self.queue_max_messages.to_string(),
            )
            .set(
                "queue.buffering.max.kbytes",
                self.queue_max_kbytes.to_string(),
            )
            .set("message.max.bytes", self.message_max_bytes.to_string())
            .set("client.id", "fhirhose");
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }
}

/// Errors of the publisher.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The brokers could not be reached.
    #[error("kafka brokers {brokers} are unreachable: {source}")]
    Unreachable {
        /// Broker list.
        brokers: String,
        /// Cause.
        source: KafkaError,
    },
    /// Client configuration was rejected.
    #[error("kafka client configuration is invalid: {0}")]
    Config(KafkaError),
    /// A topic could not be created.
    #[error("kafka topic {topic} could not be created: {code}")]
    CreateTopic {
        /// Topic.
        topic: String,
        /// Broker error code.
        code: String,
    },
    /// A send was refused locally.
    #[error("kafka send to {topic} failed: {source}")]
    Send {
        /// Topic.
        topic: String,
        /// Cause.
        source: KafkaError,
    },
    /// Some deliveries failed.
    #[error("{failed} kafka deliveries failed, first error: {first}")]
    Delivery {
        /// Failed count.
        failed: u64,
        /// First error (an error name, no content).
        first: String,
    },
    /// Deliveries did not all complete in time.
    #[error("kafka deliveries timed out: {pending} of {sent} still pending")]
    Timeout {
        /// Pending count.
        pending: u64,
        /// Sent count.
        sent: u64,
    },
}

/// Counts deliveries for one unit of work (a file task).
#[derive(Debug, Default)]
pub struct DeliveryTracker {
    sent: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    /// Highest line number below which every delivery was acknowledged is tracked by the
    /// caller; this keeps the first failure for the report.
    first_error: Mutex<Option<String>>,
    done: tokio::sync::Notify,
}

impl DeliveryTracker {
    /// A new, empty tracker.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Acquire)
    }

    /// Acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// Failed so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Acquire)
    }

    fn settle(&self, err: Option<String>) {
        if let Some(e) = err {
            self.failed.fetch_add(1, Ordering::AcqRel);
            let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
            if first.is_none() {
                *first = Some(e);
            }
        } else {
            self.acked.fetch_add(1, Ordering::AcqRel);
        }
        if self.acked() + self.failed() >= self.sent() {
            self.done.notify_waiters();
        }
    }

    /// Waits until every sent message is acknowledged or failed; errors if any failed.
    pub async fn wait(&self, timeout: Duration) -> Result<u64, PublishError> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.done.notified();
            let (sent, acked, failed) = (self.sent(), self.acked(), self.failed());
            if acked + failed >= sent {
                if failed > 0 {
                    let first = self
                        .first_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone()
                        .unwrap_or_default();
                    return Err(PublishError::Delivery { failed, first });
                }
                return Ok(acked);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(PublishError::Timeout {
                    pending: sent - acked - failed,
                    sent,
                });
            }
            // Re-check periodically too: a notify can race with the counters.
            let _ =
                tokio::time::timeout((deadline - now).min(Duration::from_millis(200)), notified)
                    .await;
        }
    }
}

/// Routes delivery reports to their tracker.
#[derive(Debug)]
pub struct TrackerContext;

impl ClientContext for TrackerContext {}

impl ProducerContext for TrackerContext {
    type DeliveryOpaque = Box<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Self::DeliveryOpaque) {
        use fhirhose_metrics::catalogue::{KAFKA_DELIVERY_FAILURES, KAFKA_DELIVERY_SECONDS};
        let Pending { tracker, sent } = *pending;
        let source = fhirhose_metrics::default_source();
        match result {
            Ok(_) => {
                KAFKA_DELIVERY_SECONDS.observe(&[&source], sent.elapsed().as_secs_f64());
                tracker.settle(None);
            }
            Err((e, _)) => {
                let name = e
                    .rdkafka_error_code()
                    .map_or_else(|| "unknown".to_string(), |c| format!("{c:?}"));
                KAFKA_DELIVERY_FAILURES.inc(&[&source, &name]);
                tracker.settle(Some(name));
            }
        }
    }
}

/// A message in flight: its file task's tracker and when it was handed to librdkafka
/// (for `fhirhose_kafka_delivery_seconds`, which so includes queueing and batching).
#[derive(Debug)]
pub struct Pending {
    tracker: Arc<DeliveryTracker>,
    sent: Instant,
}

/// The event header values (no PHI: ids, types, pointers and times only).
#[derive(Debug, Clone, Copy)]
pub struct EventMeta<'a> {
    /// Deterministic event id.
    pub ce_id: &'a str,
    /// `ce_source`: the source's URI.
    pub source: &'a str,
    /// `ce_type`.
    pub ce_type: &'a str,
    /// `ce_subject`: `ResourceType/id`.
    pub subject: &'a str,
    /// `ce_time`: `meta.lastUpdated` when present.
    pub time: Option<&'a str>,
    /// Raw object key.
    pub raw_key: &'a str,
    /// 1-based line in the raw object.
    pub line: u64,
    /// Run id.
    pub run_id: &'a str,
}

/// `ce_type` of an upsert.
pub const CE_TYPE_UPSERT: &str = "org.fhirhose.resource.upserted";
/// `ce_type` of a delete.
pub const CE_TYPE_DELETE: &str = "org.fhirhose.resource.deleted";
/// `ce_type` of a dead letter.
pub const CE_TYPE_DEADLETTER: &str = "org.fhirhose.deadletter";

impl EventMeta<'_> {
    /// Binary-mode CloudEvents headers plus lineage; `extra` headers are appended.
    pub fn headers(&self, extra: &[(&str, &str)]) -> OwnedHeaders {
        let line = self.line.to_string();
        let mut h = OwnedHeaders::new_with_capacity(10 + extra.len())
            .insert(Header {
                key: "ce_specversion",
                value: Some("1.0"),
            })
            .insert(Header {
                key: "ce_id",
                value: Some(self.ce_id),
            })
            .insert(Header {
                key: "ce_source",
                value: Some(self.source),
            })
            .insert(Header {
                key: "ce_type",
                value: Some(self.ce_type),
            })
            .insert(Header {
                key: "ce_subject",
                value: Some(self.subject),
            });
        if let Some(t) = self.time {
            h = h.insert(Header {
                key: "ce_time",
                value: Some(t),
            });
        }
        h = h
            .insert(Header {
                key: "content-type",
                value: Some("application/fhir+json"),
            })
            .insert(Header {
                key: "fhirhose_raw_key",
                value: Some(self.raw_key),
            })
            .insert(Header {
                key: "fhirhose_line",
                value: Some(line.as_str()),
            })
            .insert(Header {
                key: "fhirhose_run_id",
                value: Some(self.run_id),
            });
        for (k, v) in extra {
            h = h.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        h
    }
}

/// The Kafka publisher. Cheap to share behind an `Arc`.
pub struct Publisher {
    producer: ThreadedProducer<TrackerContext>,
    admin: AdminClient<DefaultClientContext>,
    known_topics: Mutex<HashSet<String>>,
    cfg: KafkaConfig,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("brokers", &self.cfg.brokers)
            .field("topic_prefix", &self.cfg.topic_prefix)
            .finish()
    }
}

impl Publisher {
    /// Connects and checks that the brokers answer within `connect_timeout`.
    pub async fn connect(cfg: KafkaConfig) -> Result<Self, PublishError> {
        let cc = cfg.client_config();
        let producer: ThreadedProducer<TrackerContext> = cc
            .create_with_context(TrackerContext)
            .map_err(PublishError::Config)?;
        let mut admin_cfg = ClientConfig::new();
        admin_cfg.set("bootstrap.servers", &cfg.brokers);
        for (k, v) in &cfg.extra {
            admin_cfg.set(k, v);
        }
        let admin: AdminClient<DefaultClientContext> =
            admin_cfg.create().map_err(PublishError::Config)?;
        let publisher = Self {
            producer,
            admin,
            known_topics: Mutex::new(HashSet::new()),
            cfg,
        };
        publisher.check_connection().await?;
        Ok(publisher)
    }

    async fn check_connection(&self) -> Result<(), PublishError> {
        let timeout = self.cfg.connect_timeout;
        let client = self.producer.client();
        // fetch_metadata blocks; it is short and only done once.
        let res = tokio::task::block_in_place(|| client.fetch_metadata(None, timeout));
        match res {
            Ok(md) if !md.brokers().is_empty() => Ok(()),
            Ok(_) => Err(PublishError::Unreachable {
                brokers: self.cfg.brokers.clone(),
                source: KafkaError::MetadataFetch(RDKafkaErrorCode::BrokerNotAvailable),
            }),
            Err(source) => Err(PublishError::Unreachable {
                brokers: self.cfg.brokers.clone(),
                source,
            }),
        }
    }

    /// Identifies where this publisher's events go (brokers and topic prefix): an ack
    /// watermark checkpointed for one sink is never applied to another.
    pub fn sink_id(&self) -> String {
        format!("kafka:{}|{}", self.cfg.brokers, self.cfg.topic_prefix)
    }

    /// The topic for a resource type.
    pub fn topic_for(&self, resource_type: &str) -> String {
        format!("{}.{}", self.cfg.topic_prefix, resource_type)
    }

    /// The dead-letter topic.
    pub fn deadletter_topic(&self) -> String {
        format!("{}.deadletter", self.cfg.topic_prefix)
    }

    /// Creates `topic` unless it is known to exist.
    pub async fn ensure_topic(&self, topic: &str) -> Result<(), PublishError> {
        if self
            .known_topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(topic)
        {
            return Ok(());
        }
        if !self.cfg.create_topics {
            self.known_topics
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(topic.to_string());
            return Ok(());
        }
        let nt = NewTopic::new(
            topic,
            self.cfg.partitions,
            TopicReplication::Fixed(self.cfg.replication),
        );
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let res = self.admin.create_topics([&nt], &opts).await.map_err(|e| {
            PublishError::CreateTopic {
                topic: topic.to_string(),
                code: e.to_string(),
            }
        })?;
        for r in res {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(PublishError::CreateTopic {
                        topic: topic.to_string(),
                        code: format!("{code:?}"),
                    })
                }
            }
        }
        tracing::debug!(topic, "kafka topic ready");
        self.known_topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.to_string());
        Ok(())
    }

    /// Sends one record, waiting while librdkafka's queue is full. The delivery is counted
    /// in `tracker`. A `None` payload is a tombstone (used for deletes, so that compacted
    /// topics drop the resource).
    pub async fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: Option<&[u8]>,
        headers: OwnedHeaders,
        tracker: &Arc<DeliveryTracker>,
    ) -> Result<(), PublishError> {
        tracker.sent.fetch_add(1, Ordering::AcqRel);
        let pending = Box::new(Pending {
            tracker: Arc::clone(tracker),
            sent: Instant::now(),
        });
        let mut record = BaseRecord::with_opaque_to(topic, pending)
            .key(key)
            .headers(headers);
        if let Some(p) = payload {
            record = record.payload(p);
        }
        let mut backoff = Duration::from_micros(200);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(50));
                }
                Err((source, _)) => {
                    // Never reaches the delivery callback: settle it here.
                    let code = source
                        .rdkafka_error_code()
                        .map_or_else(|| "send".to_string(), |c| format!("{c:?}"));
                    fhirhose_metrics::catalogue::KAFKA_DELIVERY_FAILURES
                        .inc(&[&fhirhose_metrics::default_source(), &code]);
                    tracker.settle(Some(code));
                    return Err(PublishError::Send {
                        topic: topic.to_string(),
                        source,
                    });
                }
            }
        }
    }

    /// Flushes librdkafka's queue.
    pub async fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        let p = &self.producer;
        tokio::task::block_in_place(|| p.flush(timeout)).map_err(|source| PublishError::Send {
            topic: "*".into(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::MockCluster;
    use rdkafka::Message;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publishes_with_cloudevents_headers_and_tracks_deliveries() {
        let cluster = MockCluster::new(1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let mut cfg = KafkaConfig::new(brokers.clone());
        cfg.partitions = 1;
        cfg.create_topics = false;
        let p = Publisher::connect(cfg).await.unwrap();
        let topic = p.topic_for("Patient");
        p.ensure_topic(&topic).await.unwrap();
        let tracker = DeliveryTracker::new();
        for i in 0..10u64 {
            let id = format!("p{i}");
            let subject = format!("Patient/{id}");
            let meta = EventMeta {
                ce_id: &format!("id-{i}"),
                source: "urn:test",
                ce_type: CE_TYPE_UPSERT,
                subject: &subject,
                time: Some("2020-01-01T00:00:00Z"),
                raw_key: "raw/x",
                line: i + 1,
                run_id: "run",
            };
            p.send(
                &topic,
                subject.as_bytes(),
                Some(b"{}"),
                meta.headers(&[]),
                &tracker,
            )
            .await
            .unwrap();
        }
        assert_eq!(tracker.wait(Duration::from_secs(10)).await.unwrap(), 10);
        // Every delivery's latency was measured, and is a latency (not a clock reading).
        let snap = fhirhose_metrics::snapshot();
        let lat = &snap["fhirhose_kafka_delivery_seconds"];
        let count: u64 = lat.iter().filter_map(|s| s.count).sum();
        let sum: f64 = lat.iter().filter_map(|s| s.sum).sum();
        assert!(count >= 10, "{count}");
        let mean = sum / count as f64;
        assert!(mean < 10.0, "mean delivery {mean} s");

        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "t")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&[&topic]).unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while got.len() < 10 && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                use rdkafka::message::Headers;
                let hs = m.headers().unwrap();
                let names: Vec<_> = hs.iter().map(|h| h.key.to_string()).collect();
                assert!(names.contains(&"ce_id".to_string()));
                assert!(names.contains(&"ce_time".to_string()));
                got.push(String::from_utf8(m.key().unwrap().to_vec()).unwrap());
            }
        }
        // The mock cluster auto-creates topics with several partitions: order is per partition.
        got.sort();
        let want: Vec<String> = (0..10).map(|i| format!("Patient/p{i}")).collect();
        let mut want = want;
        want.sort();
        assert_eq!(got, want);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreachable_brokers_fail_fast_with_a_clear_error() {
        let mut cfg = KafkaConfig::new("127.0.0.1:1");
        cfg.connect_timeout = Duration::from_millis(500);
        let err = Publisher::connect(cfg).await.unwrap_err();
        assert!(err.to_string().contains("unreachable"), "{err}");
    }
}
