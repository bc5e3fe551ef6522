//! X-Ray: one trace becomes segment documents, and the sender puts them.
//!
//! A trace is one segment named after its service, with one subsegment per span, as the
//! design document's `_create_segment` draws it. Ids are derived from the trace id, not
//! drawn at random, so that sending a trace again (after a retry, or in-progress first
//! and completed later) overwrites the earlier documents instead of adding new ones.
//!
//! X-Ray accepts documents of at most 64 kB. A larger trace is split: the segment keeps
//! as many subsegments as fit, and every other subsegment is sent as a document of its
//! own (`"type": "subsegment"` with the segment as `parent_id`). Parts that cannot fit
//! even then are cut, and the cut is counted in the document's metadata:
//!
//! - on the segment: annotations past what fits (`annotations_dropped`, which also counts
//!   those past X-Ray's 50 and those whose sanitized keys collide), then error messages
//!   (`exceptions_dropped`);
//! - on a subsegment: its log lines (`logs_dropped`), then its tags (`tags_dropped`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use skafu_domain::trace::{Span, TraceEvent, TraceStatus};

use super::{classify_sdk_error, is_retryable_code, PublishError};

/// Largest document this module builds, in serialized bytes: X-Ray's 64 kB limit less a
/// margin, so that a document never lands on the boundary.
pub const MAX_DOCUMENT_BYTES: usize = 62_000;
/// Largest document [`XRaySender::put`] sends at all (X-Ray's 64 kB).
pub const XRAY_DOCUMENT_LIMIT: usize = 64_000;
/// Most documents in one `PutTraceSegments` call. The API states no limit; a bounded
/// batch keeps each request small and a failure's blast radius bounded.
pub const MAX_DOCUMENTS_PER_CALL: usize = 50;
/// Most annotations X-Ray indexes per trace.
pub const MAX_ANNOTATIONS: usize = 50;
/// Longest annotation key.
pub const MAX_ANNOTATION_KEY_LEN: usize = 500;
/// Longest annotation value.
pub const MAX_ANNOTATION_VALUE_LEN: usize = 1000;
/// Longest segment or subsegment name.
pub const MAX_NAME_LEN: usize = 200;
/// The annotation that carries the traced operation's name.
pub const OPERATION_ANNOTATION: &str = "operation";

/// What X-Ray needs to know about one trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceForXray {
    /// X-Ray trace id, `1-xxxxxxxx-xxxxxxxxxxxxxxxxxxxxxxxx`.
    pub trace_id: String,
    /// The service that started the trace; becomes the segment's name.
    pub service_name: String,
    /// Version of the service, sent as `service.version`.
    pub service_version: String,
    /// The traced operation; sent as the `operation` annotation.
    pub operation_name: String,
    /// Start of the trace.
    pub start_time: DateTime<Utc>,
    /// End of the trace; `None` sends the segment as in progress.
    pub end_time: Option<DateTime<Utc>>,
    /// Annotations as recorded; keys are sanitized when sent.
    pub annotations: BTreeMap<String, String>,
    /// Spans in the order they were recorded.
    pub spans: Vec<Span>,
    /// Error messages in the order they were recorded.
    pub errors: Vec<String>,
    /// Status of the trace.
    pub status: TraceStatus,
}

impl TraceForXray {
    /// Folds a trace's events into what X-Ray needs. Returns `None` when the events do
    /// not start with the trace (a trace without `TraceStarted` has nothing to send).
    pub fn from_events<'a>(
        trace_id: &str,
        service_version: &str,
        events: impl IntoIterator<Item = &'a TraceEvent>,
    ) -> Option<Self> {
        let mut trace: Option<Self> = None;
        for event in events {
            match (event, trace.as_mut()) {
                (
                    TraceEvent::TraceStarted {
                        service_name,
                        operation_name,
                        start_time,
                    },
                    _,
                ) => {
                    trace = Some(Self {
                        trace_id: trace_id.to_string(),
                        service_name: service_name.clone(),
                        service_version: service_version.to_string(),
                        operation_name: operation_name.clone(),
                        start_time: *start_time,
                        end_time: None,
                        annotations: BTreeMap::new(),
                        spans: Vec::new(),
                        errors: Vec::new(),
                        status: TraceStatus::Active,
                    });
                }
                (TraceEvent::SpanAdded(span), Some(t)) => t.spans.push(span.clone()),
                (TraceEvent::AnnotationAdded { key, value }, Some(t)) => {
                    t.annotations.insert(key.clone(), value.clone());
                }
                (TraceEvent::TraceError { error_message, .. }, Some(t)) => {
                    t.errors.push(error_message.clone());
                }
                (
                    TraceEvent::TraceCompleted {
                        end_time, status, ..
                    },
                    Some(t),
                ) => {
                    t.end_time = Some(*end_time);
                    t.status = *status;
                }
                (_, None) => {}
            }
        }
        trace
    }
}

/// The segment id of a trace: 16 lowercase hex digits derived from the trace id.
pub fn segment_id(trace_id: &str) -> String {
    format!("{:016x}", fnv1a(trace_id.as_bytes()))
}

/// FNV-1a, 64 bits: tiny, stable across releases and platforms, and enough to keep the
/// ids of one trace apart. It is not meant to resist anyone choosing collisions.
fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

fn derived_id(trace_id: &str, kind: &str, index: &str) -> String {
    format!(
        "{:016x}",
        fnv1a(format!("{trace_id}/{kind}/{index}").as_bytes())
    )
}

fn is_segment_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Makes an annotation key X-Ray indexes: every character outside `[A-Za-z0-9_]` becomes
/// `_` and the key is cut at [`MAX_ANNOTATION_KEY_LEN`] characters. X-Ray silently drops
/// annotations with other keys, so `http.status` would otherwise vanish. Returns `None`
/// for an empty key.
pub fn sanitize_annotation_key(key: &str) -> Option<String> {
    let sanitized: String = key
        .chars()
        .take(MAX_ANNOTATION_KEY_LEN)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    (!sanitized.is_empty()).then_some(sanitized)
}

/// Makes a segment or subsegment name X-Ray accepts: letters, digits, spaces and
/// `_ . : / % & # = + - @` stay, anything else becomes `_`; at most [`MAX_NAME_LEN`]
/// characters.
fn sanitize_name(name: &str) -> String {
    let sanitized: String = name
        .chars()
        .take(MAX_NAME_LEN)
        .map(|c| {
            if c.is_alphanumeric() || c == ' ' || "_.:/%&#=+-@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if sanitized.trim().is_empty() {
        "unnamed".to_string()
    } else {
        sanitized
    }
}

fn truncate_chars(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// Epoch seconds with millisecond precision, as X-Ray wants its times.
fn epoch_seconds(time: DateTime<Utc>) -> f64 {
    time.timestamp_millis() as f64 / 1000.0
}

fn serialized_len(doc: &Value) -> usize {
    serde_json::to_vec(doc).map_or(usize::MAX, |bytes| bytes.len())
}

/// The largest `n` in `0..=total` whose document fits `limit`, assuming documents grow
/// with `n`; 0 when none fits.
fn largest_fitting(total: usize, limit: usize, build: impl Fn(usize) -> Value) -> usize {
    let fits = |n| serialized_len(&build(n)) <= limit;
    if total == 0 || fits(total) {
        return total;
    }
    let (mut lo, mut hi) = (0, total - 1);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// Builds the documents of a trace: the segment first, then any subsegments that had to
/// be sent on their own. Every document is at most [`MAX_DOCUMENT_BYTES`] when
/// serialized, and every span appears in exactly one document.
pub fn segment_documents(input: &TraceForXray) -> Vec<Value> {
    let parent = SegmentParts::new(input);
    let id = parent.id.clone();

    // A standalone subsegment carries its trace and parent too; size the subsegments so
    // that they fit either way.
    let standalone_extra = serialized_len(&standalone(json!({}), &input.trace_id, &id)) - 2 + 1;
    let sub_limit = MAX_DOCUMENT_BYTES - standalone_extra;
    let subsegments: Vec<Value> = input
        .spans
        .iter()
        .map(|span| fitted_subsegment(input, span, sub_limit))
        .collect();

    let whole = parent.build(
        parent.annotations.len(),
        parent.exceptions.len(),
        &subsegments,
    );
    if serialized_len(&whole) <= MAX_DOCUMENT_BYTES {
        return vec![whole];
    }

    // Annotations outrank error messages: they are what traces are searched by.
    let annotations = largest_fitting(parent.annotations.len(), MAX_DOCUMENT_BYTES, |n| {
        parent.build(n, 0, &[])
    });
    let exceptions = largest_fitting(parent.exceptions.len(), MAX_DOCUMENT_BYTES, |n| {
        parent.build(annotations, n, &[])
    });

    // Serialized sizes add up exactly: `,"subsegments":[` + items joined by `,` + `]`.
    let base = serialized_len(&parent.build(annotations, exceptions, &[]));
    let mut used = base + r#","subsegments":[]"#.len();
    let mut kept = 0;
    for (i, sub) in subsegments.iter().enumerate() {
        let size = serialized_len(sub) + usize::from(i > 0);
        if used + size > MAX_DOCUMENT_BYTES {
            break;
        }
        used += size;
        kept += 1;
    }

    let mut docs = vec![parent.build(annotations, exceptions, &subsegments[..kept])];
    docs.extend(
        subsegments
            .into_iter()
            .skip(kept)
            .map(|sub| standalone(sub, &input.trace_id, &id)),
    );
    docs
}

/// The parts of a segment document that may be cut to fit.
struct SegmentParts {
    id: String,
    fixed: Map<String, Value>,
    metadata: Map<String, Value>,
    /// In priority order: the operation first, then the trace's annotations by key.
    annotations: Vec<(String, String)>,
    annotations_dropped: usize,
    exceptions: Vec<Value>,
}

impl SegmentParts {
    fn new(input: &TraceForXray) -> Self {
        let id = segment_id(&input.trace_id);

        let mut fixed = Map::new();
        fixed.insert("name".into(), sanitize_name(&input.service_name).into());
        fixed.insert("id".into(), id.clone().into());
        fixed.insert("trace_id".into(), input.trace_id.clone().into());
        fixed.insert("start_time".into(), epoch_seconds(input.start_time).into());
        match input.end_time {
            Some(end) => fixed.insert("end_time".into(), epoch_seconds(end).into()),
            None => fixed.insert("in_progress".into(), true.into()),
        };
        fixed.insert(
            "service".into(),
            json!({ "name": input.service_name, "version": input.service_version }),
        );
        // Only a failed trace carries the flags: X-Ray consumers, moto's included, test
        // for the keys rather than their values.
        if !input.errors.is_empty() || input.status == TraceStatus::Error {
            fixed.insert("error".into(), true.into());
            fixed.insert("fault".into(), true.into());
        }

        let mut metadata = Map::new();
        metadata.insert("operation_name".into(), input.operation_name.clone().into());
        metadata.insert("status".into(), json!(input.status));
        metadata.insert("span_count".into(), input.spans.len().into());

        let mut annotations = vec![(
            OPERATION_ANNOTATION.to_string(),
            truncate_chars(&input.operation_name, MAX_ANNOTATION_VALUE_LEN),
        )];
        for (key, value) in &input.annotations {
            let Some(key) = sanitize_annotation_key(key) else {
                continue;
            };
            // The first key to claim a sanitized name keeps it; that is the operation,
            // then the trace's keys in sorted order.
            if annotations.len() < MAX_ANNOTATIONS && !annotations.iter().any(|(k, _)| *k == key) {
                annotations.push((key, truncate_chars(value, MAX_ANNOTATION_VALUE_LEN)));
            }
        }
        let annotations_dropped = input.annotations.len() + 1 - annotations.len();

        let exceptions = input
            .errors
            .iter()
            .enumerate()
            .map(|(i, message)| {
                json!({
                    "id": derived_id(&input.trace_id, "error", &i.to_string()),
                    "message": message,
                })
            })
            .collect();

        Self {
            id,
            fixed,
            metadata,
            annotations,
            annotations_dropped,
            exceptions,
        }
    }

    fn build(&self, annotations: usize, exceptions: usize, subsegments: &[Value]) -> Value {
        let mut doc = self.fixed.clone();

        let kept: Map<String, Value> = self.annotations[..annotations]
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        doc.insert("annotations".into(), Value::Object(kept));

        let mut metadata = self.metadata.clone();
        let annotations_dropped = self.annotations_dropped + self.annotations.len() - annotations;
        if annotations_dropped > 0 {
            metadata.insert("annotations_dropped".into(), annotations_dropped.into());
        }
        if exceptions < self.exceptions.len() {
            metadata.insert(
                "exceptions_dropped".into(),
                (self.exceptions.len() - exceptions).into(),
            );
        }
        doc.insert("metadata".into(), json!({ "default": metadata }));

        if exceptions > 0 {
            doc.insert(
                "cause".into(),
                json!({ "exceptions": &self.exceptions[..exceptions] }),
            );
        }
        if !subsegments.is_empty() {
            doc.insert("subsegments".into(), Value::Array(subsegments.to_vec()));
        }
        Value::Object(doc)
    }
}

fn subsegment_id(trace_id: &str, span: &Span) -> String {
    if is_segment_id(&span.span_id) {
        span.span_id.clone()
    } else {
        // Events from before span ids were checked: keep them stable all the same.
        derived_id(trace_id, "span", &span.span_id)
    }
}

fn subsegment(input: &TraceForXray, span: &Span, tags: usize, logs: usize) -> Value {
    let kept_tags: Map<String, Value> = span
        .tags
        .iter()
        .take(tags)
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
        .collect();
    let kept_logs: Vec<Value> = span.logs[..logs]
        .iter()
        .map(|log| {
            json!({
                "message": log.message,
                "level": log.level,
                "timestamp": log.timestamp,
            })
        })
        .collect();
    let mut metadata = Map::new();
    metadata.insert("tags".into(), Value::Object(kept_tags));
    metadata.insert("logs".into(), Value::Array(kept_logs));
    if tags < span.tags.len() {
        metadata.insert("tags_dropped".into(), (span.tags.len() - tags).into());
    }
    if logs < span.logs.len() {
        metadata.insert("logs_dropped".into(), (span.logs.len() - logs).into());
    }
    json!({
        "name": sanitize_name(&span.name),
        "id": subsegment_id(&input.trace_id, span),
        "start_time": epoch_seconds(span.start_time),
        "end_time": epoch_seconds(span.end_time),
        "metadata": { "default": metadata },
    })
}

/// The span as a subsegment of at most `limit` bytes: log lines go first, then tags.
fn fitted_subsegment(input: &TraceForXray, span: &Span, limit: usize) -> Value {
    let (tags, logs) = (span.tags.len(), span.logs.len());
    let logs = largest_fitting(logs, limit, |n| subsegment(input, span, tags, n));
    let tags = if logs == 0 {
        largest_fitting(tags, limit, |n| subsegment(input, span, n, 0))
    } else {
        tags
    };
    subsegment(input, span, tags, logs)
}

fn standalone(mut subsegment: Value, trace_id: &str, parent_id: &str) -> Value {
    if let Value::Object(doc) = &mut subsegment {
        doc.insert("type".into(), "subsegment".into());
        doc.insert("trace_id".into(), trace_id.into());
        doc.insert("parent_id".into(), parent_id.into());
    }
    subsegment
}

/// Sends segment documents with `PutTraceSegments`.
#[derive(Debug, Clone)]
pub struct XRaySender {
    client: aws_sdk_xray::Client,
}

impl XRaySender {
    /// Wraps a client (see [`super::config::load_aws`]).
    pub fn new(client: aws_sdk_xray::Client) -> Self {
        Self { client }
    }

    /// Sends the documents, [`MAX_DOCUMENTS_PER_CALL`] per call, and stops at the first
    /// failure. X-Ray reports rejected documents in the answer, not as an error status,
    /// so each answer's `UnprocessedTraceSegments` is checked too. Sending the documents
    /// of a trace again is safe: their ids are stable, so X-Ray overwrites.
    ///
    /// # Errors
    ///
    /// [`PublishError::Permanent`] when a document is over 64 kB, the call is rejected,
    /// or X-Ray refused a document for a reason other than throttling or an internal
    /// failure (one such refusal decides, since trying again cannot fix it);
    /// [`PublishError::Retryable`] when only passing conditions stood in the way.
    pub async fn put(&self, docs: Vec<Value>) -> Result<(), PublishError> {
        let mut serialized = Vec::with_capacity(docs.len());
        for doc in &docs {
            let text = serde_json::to_string(doc).map_err(|err| {
                PublishError::Permanent(format!("PutTraceSegments: unserializable: {err}"))
            })?;
            if text.len() > XRAY_DOCUMENT_LIMIT {
                return Err(PublishError::Permanent(format!(
                    "PutTraceSegments: document {} is {} bytes, over X-Ray's {XRAY_DOCUMENT_LIMIT}",
                    doc.get("id").and_then(Value::as_str).unwrap_or("?"),
                    text.len()
                )));
            }
            serialized.push(text);
        }

        for chunk in serialized.chunks(MAX_DOCUMENTS_PER_CALL) {
            let output = self
                .client
                .put_trace_segments()
                .set_trace_segment_documents(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|err| classify_sdk_error("PutTraceSegments", &err))?;
            check_unprocessed(
                output
                    .unprocessed_trace_segments()
                    .iter()
                    .map(|s| (s.id(), s.error_code(), s.message())),
            )?;
        }
        Ok(())
    }
}

fn check_unprocessed<'a>(
    unprocessed: impl Iterator<Item = (Option<&'a str>, Option<&'a str>, Option<&'a str>)>,
) -> Result<(), PublishError> {
    let mut all_retryable = true;
    let mut reasons = Vec::new();
    for (id, code, message) in unprocessed {
        all_retryable &= code.is_some_and(is_retryable_code);
        reasons.push(format!(
            "{}: {} {}",
            id.unwrap_or("(no id)"),
            code.unwrap_or("(no code)"),
            message.unwrap_or("")
        ));
    }
    if reasons.is_empty() {
        return Ok(());
    }
    let message = format!(
        "PutTraceSegments left {} segment(s) unprocessed: {}",
        reasons.len(),
        reasons.join("; ")
    );
    if all_retryable {
        Err(PublishError::Retryable(message))
    } else {
        Err(PublishError::Permanent(message))
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use skafu_domain::trace::SpanLog;

    use super::*;

    const TRACE_ID: &str = "1-6930f2c0-a006649127e371903a2de979";

    fn start() -> DateTime<Utc> {
        "2026-12-04T12:00:00.125Z".parse().unwrap()
    }

    fn span(i: usize) -> Span {
        Span {
            span_id: format!("{:016x}", 0xabc0_0000 + i),
            name: format!("step {i}"),
            start_time: start() + Duration::milliseconds(i as i64),
            end_time: start() + Duration::milliseconds(i as i64 + 5),
            duration_ms: 5.0,
            tags: BTreeMap::from([("db.table".to_string(), "orders".to_string())]),
            logs: vec![SpanLog {
                message: "ok".into(),
                level: "INFO".into(),
                timestamp: start(),
            }],
        }
    }

    fn trace(spans: Vec<Span>) -> TraceForXray {
        TraceForXray {
            trace_id: TRACE_ID.into(),
            service_name: "checkout".into(),
            service_version: "1.0".into(),
            operation_name: "POST /orders".into(),
            start_time: start(),
            end_time: Some(start() + Duration::milliseconds(250)),
            annotations: BTreeMap::from([("customer.tier".to_string(), "gold".to_string())]),
            spans,
            errors: vec![],
            status: TraceStatus::Completed,
        }
    }

    fn len(doc: &Value) -> usize {
        serde_json::to_vec(doc).unwrap().len()
    }

    /// A span whose tags alone take about `kb` kilobytes.
    fn heavy_span(i: usize, kb: usize) -> Span {
        let mut s = span(i);
        s.tags = (0..kb)
            .map(|t| (format!("tag{t}"), "x".repeat(1000)))
            .collect();
        s
    }

    fn span_ids_in(docs: &[Value]) -> Vec<String> {
        let mut ids = Vec::new();
        for doc in docs {
            if doc["type"] == "subsegment" {
                ids.push(doc["id"].as_str().unwrap().to_string());
            }
            for sub in doc["subsegments"].as_array().into_iter().flatten() {
                ids.push(sub["id"].as_str().unwrap().to_string());
            }
        }
        ids
    }

    #[test]
    fn a_small_trace_is_one_segment_shaped_like_the_design() {
        let docs = segment_documents(&trace(vec![span(0)]));

        assert_eq!(
            docs,
            vec![json!({
                "name": "checkout",
                "id": segment_id(TRACE_ID),
                "trace_id": TRACE_ID,
                "start_time": 1796385600.125,
                "end_time": 1796385600.375,
                "service": { "name": "checkout", "version": "1.0" },
                "annotations": { "operation": "POST /orders", "customer_tier": "gold" },
                "metadata": { "default": {
                    "operation_name": "POST /orders",
                    "status": "completed",
                    "span_count": 1,
                }},
                "subsegments": [{
                    "name": "step 0",
                    "id": "00000000abc00000",
                    "start_time": 1796385600.125,
                    "end_time": 1796385600.13,
                    "metadata": { "default": {
                        "tags": { "db.table": "orders" },
                        "logs": [{
                            "message": "ok",
                            "level": "INFO",
                            "timestamp": "2026-12-04T12:00:00.125Z",
                        }],
                    }},
                }],
            })]
        );
    }

    #[test]
    fn errors_set_error_and_fault_and_become_exceptions() {
        let mut t = trace(vec![]);
        t.errors = vec!["db timeout".into(), "retry failed".into()];
        t.status = TraceStatus::Error;

        let doc = &segment_documents(&t)[0];

        assert_eq!(doc["error"], true);
        assert_eq!(doc["fault"], true);
        let exceptions = doc["cause"]["exceptions"].as_array().unwrap();
        let messages: Vec<_> = exceptions.iter().map(|e| &e["message"]).collect();
        assert_eq!(messages, [&json!("db timeout"), &json!("retry failed")]);
        for e in exceptions {
            assert!(is_segment_id(e["id"].as_str().unwrap()));
        }
        assert_ne!(exceptions[0]["id"], exceptions[1]["id"]);
    }

    #[test]
    fn a_clean_trace_has_no_error_keys_at_all() {
        let doc = &segment_documents(&trace(vec![]))[0];

        for key in ["error", "fault", "throttle", "cause", "subsegments"] {
            assert!(doc.get(key).is_none(), "{key}");
        }
    }

    #[test]
    fn an_unfinished_trace_is_sent_in_progress() {
        let mut t = trace(vec![]);
        t.end_time = None;
        t.status = TraceStatus::Active;

        let doc = &segment_documents(&t)[0];

        assert_eq!(doc["in_progress"], true);
        assert!(doc.get("end_time").is_none());
    }

    #[test]
    fn ids_are_16_lowercase_hex_digits_and_stable() {
        let id = segment_id(TRACE_ID);
        assert!(is_segment_id(&id), "{id}");
        assert_eq!(id, segment_id(TRACE_ID));
        assert_ne!(id, segment_id("1-6930f2c0-a006649127e371903a2de97a"));
        // FNV-1a's published test vectors pin the function itself.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);

        let mut odd = span(0);
        odd.span_id = "not-hex".into();
        let doc = &segment_documents(&trace(vec![odd]))[0];
        let sub_id = doc["subsegments"][0]["id"].as_str().unwrap();
        assert!(is_segment_id(sub_id), "{sub_id}");
        assert_eq!(
            segment_documents(&trace(vec![span(0)]))[0]["subsegments"][0]["id"],
            "00000000abc00000"
        );
    }

    #[test]
    fn annotation_keys_keep_only_letters_digits_and_underscores() {
        assert_eq!(
            sanitize_annotation_key("http.status-code x"),
            Some("http_status_code_x".into())
        );
        assert_eq!(sanitize_annotation_key("caf\u{e9}"), Some("caf_".into()));
        assert_eq!(sanitize_annotation_key("ok_1"), Some("ok_1".into()));
        assert_eq!(sanitize_annotation_key(""), None);
        assert_eq!(
            sanitize_annotation_key(&"k".repeat(600)).map(|k| k.len()),
            Some(500)
        );
    }

    #[test]
    fn at_most_50_annotations_and_colliding_keys_keep_the_first() {
        let mut t = trace(vec![]);
        t.annotations = (0..60).map(|i| (format!("k{i:02}"), "v".into())).collect();
        t.annotations.insert("a.b".into(), "first".into());
        t.annotations.insert("a_b".into(), "second".into());
        t.annotations.insert("operation".into(), "spoofed".into());

        let doc = &segment_documents(&t)[0];

        let annotations = doc["annotations"].as_object().unwrap();
        assert_eq!(annotations.len(), MAX_ANNOTATIONS);
        assert_eq!(annotations["operation"], "POST /orders");
        assert_eq!(annotations["a_b"], "first");
        assert_eq!(doc["metadata"]["default"]["annotations_dropped"], 14);
    }

    #[test]
    fn names_are_sanitized_for_x_ray() {
        let mut t = trace(vec![span(0)]);
        t.service_name = format!("svc<{}>", "n".repeat(300));
        t.spans[0].name = "GET /a?b=c".into();

        let doc = &segment_documents(&t)[0];

        let name = doc["name"].as_str().unwrap();
        assert!(name.starts_with("svc_nnn"));
        assert_eq!(name.chars().count(), MAX_NAME_LEN);
        assert_eq!(doc["subsegments"][0]["name"], "GET /a_b=c");
    }

    #[test]
    fn a_large_trace_is_split_with_every_span_sent_exactly_once() {
        let spans: Vec<Span> = (0..12).map(|i| heavy_span(i, 20)).collect();
        let t = trace(spans.clone());

        let docs = segment_documents(&t);

        assert!(docs.len() > 1);
        for doc in &docs {
            assert!(len(doc) <= MAX_DOCUMENT_BYTES, "{} bytes", len(doc));
        }
        let parent = &docs[0];
        assert_eq!(parent["id"], segment_id(TRACE_ID));
        assert!(parent.get("type").is_none());
        for doc in &docs[1..] {
            assert_eq!(doc["type"], "subsegment");
            assert_eq!(doc["trace_id"], TRACE_ID);
            assert_eq!(doc["parent_id"], parent["id"]);
        }
        let mut sent = span_ids_in(&docs);
        sent.sort();
        let mut expected: Vec<_> = spans.iter().map(|s| s.span_id.clone()).collect();
        expected.sort();
        assert_eq!(sent, expected);
    }

    #[test]
    fn a_split_parent_keeps_as_many_subsegments_as_fit() {
        let t = trace((0..4).map(|i| heavy_span(i, 25)).collect());

        let docs = segment_documents(&t);

        let kept = docs[0]["subsegments"].as_array().map_or(0, Vec::len);
        assert_eq!(kept, 2, "two 25 kB spans fit a 62 kB segment, three do not");
        assert_eq!(docs.len(), 3);
    }

    #[test]
    fn an_oversized_span_loses_logs_then_tags_and_says_how_many() {
        let mut huge = heavy_span(0, 80);
        huge.logs = (0..100)
            .map(|i| SpanLog {
                message: format!("line {i} {}", "y".repeat(500)),
                level: "INFO".into(),
                timestamp: start(),
            })
            .collect();

        let docs = segment_documents(&trace(vec![huge]));

        for doc in &docs {
            assert!(len(doc) <= MAX_DOCUMENT_BYTES);
        }
        assert_eq!(span_ids_in(&docs), ["00000000abc00000"]);
        let sub = docs
            .iter()
            .find(|d| d["type"] == "subsegment")
            .or_else(|| docs[0]["subsegments"].get(0))
            .unwrap();
        let metadata = &sub["metadata"]["default"];
        assert_eq!(metadata["logs_dropped"], 100);
        let tags_kept = metadata["tags"].as_object().unwrap().len();
        assert!(tags_kept > 50 && tags_kept < 80, "{tags_kept}");
        assert_eq!(metadata["tags_dropped"], 80 - tags_kept);
    }

    #[test]
    fn a_flood_of_errors_is_cut_to_fit_and_counted() {
        let mut t = trace(vec![span(0)]);
        t.errors = (0..100)
            .map(|i| format!("{i}: {}", "e".repeat(4000)))
            .collect();

        let docs = segment_documents(&t);

        assert!(len(&docs[0]) <= MAX_DOCUMENT_BYTES);
        let kept = docs[0]["cause"]["exceptions"].as_array().unwrap().len();
        assert!(kept > 10 && kept < 16, "{kept}");
        assert_eq!(
            docs[0]["metadata"]["default"]["exceptions_dropped"],
            100 - kept
        );
        assert_eq!(span_ids_in(&docs), ["00000000abc00000"]);
    }

    #[test]
    fn folding_events_gives_the_trace_to_send() {
        let events = vec![
            TraceEvent::TraceStarted {
                service_name: "checkout".into(),
                operation_name: "POST /orders".into(),
                start_time: start(),
            },
            TraceEvent::SpanAdded(span(0)),
            TraceEvent::AnnotationAdded {
                key: "customer.tier".into(),
                value: "gold".into(),
            },
            TraceEvent::TraceCompleted {
                end_time: start() + Duration::milliseconds(250),
                duration_ms: 250.0,
                status: TraceStatus::Completed,
            },
        ];

        let folded = TraceForXray::from_events(TRACE_ID, "1.0", &events);

        assert_eq!(folded, Some(trace(vec![span(0)])));
        assert_eq!(
            TraceForXray::from_events(TRACE_ID, "1.0", &events[1..]),
            None
        );
    }

    #[test]
    fn unprocessed_segments_decide_retryable_or_permanent() {
        assert_eq!(check_unprocessed(std::iter::empty()), Ok(()));

        let throttled = [(Some("a"), Some("ThrottledException"), Some("slow down"))];
        assert!(matches!(
            check_unprocessed(throttled.into_iter()),
            Err(PublishError::Retryable(m)) if m.contains("slow down")
        ));

        let mixed = [
            (Some("a"), Some("ThrottledException"), None),
            (Some("b"), Some("InvalidSegment"), Some("bad trace id")),
        ];
        assert!(matches!(
            check_unprocessed(mixed.into_iter()),
            Err(PublishError::Permanent(m)) if m.contains("b: InvalidSegment bad trace id")
        ));

        let no_code = [(None, None, None)];
        assert!(matches!(
            check_unprocessed(no_code.into_iter()),
            Err(PublishError::Permanent(m)) if m.contains("(no id)")
        ));
    }
}
