//! Sending spans: OpenTelemetry's batch span processor (a thread of its own, batches of up to
//! 512 every 5 s or sooner when full, `OTEL_BSP_*` to change them), each batch written as an
//! OTLP/HTTP protobuf request (`otlp`) and POSTed with reqwest's blocking client. Nothing
//! here runs on a request's thread but [`Export::send`], which never waits: a span that finds the queue full is dropped and
//! counted, and so are the spans of a batch the collector did not take.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use prometheus::IntCounter;

use super::TracingSettings;

/// Spans waiting for the exporter at most, unless `OTEL_BSP_MAX_QUEUE_SIZE` says otherwise
/// (the SDK's default).
const QUEUE: usize = 2048;
/// How long one export may take before its batch counts as lost.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Export {
    /// Taken when the export stops (`Drop`).
    processor: Option<BatchSpanProcessor>,
    /// Spans handed to the processor and not yet to the exporter: the processor's queue
    /// holds no more than this, so a span that would not fit is known here, and counted.
    queued: Arc<AtomicUsize>,
    capacity: usize,
    dropped: IntCounter,
}

impl Export {
    pub fn start(settings: &TracingSettings, dropped: IntCounter) -> Result<Export, String> {
        // Collectors behind TLS: the HTTP client uses the process's rustls provider, the ring
        // one Portico's own TLS uses. Installing it twice is harmless (the first one stays).
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Names and values were checked when the config was compiled (`trace::compile`).
        let mut headers = reqwest_otlp::header::HeaderMap::new();
        for (name, value) in &settings.headers {
            let name = reqwest_otlp::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| format!("tracing.headers: \"{name}\": {e}"))?;
            let value = reqwest_otlp::header::HeaderValue::from_str(value)
                .map_err(|e| format!("tracing.headers: {name}: {e}"))?;
            headers.insert(name, value);
        }
        headers.insert(
            reqwest_otlp::header::CONTENT_TYPE,
            reqwest_otlp::header::HeaderValue::from_static("application/x-protobuf"),
        );
        let client = reqwest_otlp::blocking::Client::builder()
            .timeout(EXPORT_TIMEOUT)
            .default_headers(headers)
            .build()
            .map_err(|e| e.to_string())?;
        let exporter = OtlpHttp {
            client,
            endpoint: settings.endpoint.clone(),
            resource: Resource::builder()
                .with_service_name(settings.service_name.clone())
                .build(),
        };
        let capacity = std::env::var("OTEL_BSP_MAX_QUEUE_SIZE")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        let counted = Counted {
            inner: exporter,
            queued: Arc::clone(&queued),
            dropped: dropped.clone(),
            failing: AtomicBool::new(false),
        };
        // The rest of the batch settings come from `OTEL_BSP_*` when set.
        let config = BatchConfigBuilder::default()
            .with_max_queue_size(capacity)
            .build();
        let processor = BatchSpanProcessor::builder(counted)
            .with_batch_config(config)
            .build();
        Ok(Export {
            processor: Some(processor),
            queued,
            capacity,
            dropped,
        })
    }

    /// Queue `span` for export, or drop and count it when the queue is full.
    pub fn send(&self, span: SpanData) {
        let Some(processor) = &self.processor else {
            return;
        };
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.dropped.inc();
            return;
        }
        processor.on_end(span);
    }
}

impl Export {
    pub fn flush(&self) {
        if let Some(processor) = &self.processor {
            if let Err(e) = processor.force_flush() {
                log::warn!("tracing: the last spans were not sent: {e}");
            }
        }
    }
}

impl Drop for Export {
    /// What is queued is sent on a thread of its own: the last reference may go on a
    /// request's thread, and a collector that is down would hold it for the export timeout.
    fn drop(&mut self) {
        if let Some(processor) = self.processor.take() {
            let _ = std::thread::Builder::new()
                .name("portico-trace-stop".into())
                .spawn(move || {
                    if let Err(e) = processor.shutdown() {
                        log::warn!("tracing: the last spans were not sent: {e}");
                    }
                });
        }
    }
}

/// POSTs each batch to the collector as one OTLP/HTTP protobuf request.
struct OtlpHttp {
    client: reqwest_otlp::blocking::Client,
    endpoint: String,
    resource: Resource,
}

impl fmt::Debug for OtlpHttp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpHttp")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl SpanExporter for OtlpHttp {
    /// Runs on the batch processor's own thread, which may block.
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let body = super::otlp::encode(&batch, &self.resource);
        let answer = self
            .client
            .post(&self.endpoint)
            .body(body)
            .send()
            .map_err(|e| OTelSdkError::InternalFailure(format!("{e}")))?;
        let status = answer.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(OTelSdkError::InternalFailure(format!(
                "the collector answered {status}"
            )))
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource.clone();
    }
}

/// The OTLP exporter, counting what leaves the queue and what the collector did not take.
struct Counted {
    inner: OtlpHttp,
    queued: Arc<AtomicUsize>,
    dropped: IntCounter,
    failing: AtomicBool,
}

impl fmt::Debug for Counted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counted")
            .field("inner", &self.inner)
            .finish()
    }
}

impl SpanExporter for Counted {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        self.queued.fetch_sub(spans, Ordering::AcqRel);
        let result = self.inner.export(batch).await;
        // Said once when exports start failing and once when they work again: a collector
        // that is down fails every batch, many a second under load.
        let failed = result.is_err();
        let was_failing = self.failing.swap(failed, Ordering::AcqRel);
        match &result {
            Err(e) => {
                self.dropped.inc_by(spans as u64);
                if !was_failing {
                    log::warn!("tracing: spans are not reaching the collector: {e}");
                }
            }
            Ok(()) if was_failing => log::warn!("tracing: spans reach the collector again"),
            Ok(()) => {}
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
