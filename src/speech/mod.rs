//! Speech to text: one synchronous call on a leased speech instance, with the client's
//! upload streamed into it while it is still arriving.
//!
//! The HTTP handlers only parse the request (which audio, where its bytes are) and hand
//! the upload to [`SpeechService::transcribe`], which leases an instance from the
//! InstanceRegistry, frames the upload for the instance's protocol (`backends::
//! transcription`: a form for fastwhisper files, a form around a streamed WAV for openai
//! PCM, …), pumps the client's chunks into a bounded channel that the backend request
//! reads from, times each phase, and gives the lease back with the outcome.
//! Memory stays bounded and the backend hears the first audio at once. Limits are judged
//! by counting as the bytes arrive, and an upload that breaks one aborts the backend
//! request rather than ending it, so the backend never transcribes a cut-off body.
//!
//! A request holds no instance until its client has sent audio: the first chunk is
//! awaited (for at most `read_timeout_secs`) before the lease is asked for. From its
//! first byte on, an upload must keep to `min_bytes_per_sec` on average (`Pace`), so a
//! device trickling a few bytes at a time is cut off (408) within seconds rather than
//! holding the instance until `max_upload_secs`.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

use actix::Addr;
use actix_web::web::Bytes;
use futures_util::{Stream, StreamExt};

use crate::actors::messages::{Acquire, AcquireError, CallOutcome, Lease};
use crate::actors::InstanceRegistry;
use crate::backends::fastwhisper::{self, SpeechToTextResponse};
use crate::backends::{self, BackendError, Upload};
use crate::domain::{InstanceKind, UserId};
use crate::settings::SpeechSettings;
use crate::telemetry::{self, METRICS};
use tracing::Instrument;

thread_local! {
    /// One backend client per HTTP worker thread, shared by its requests.
    static CLIENT: awc::Client = backends::client();
}

/// Why a speech request got no transcript.
#[derive(Debug, thiserror::Error)]
pub enum SpeechError {
    #[error("no data from the client for {0}s; upload cut off")]
    Stalled(u64),
    #[error("the upload took longer than {0}s; upload cut off")]
    TooSlow(u64),
    #[error("the upload arrived slower than {0} bytes a second; upload cut off")]
    BelowMinRate(u64),
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("audio is longer than {0}s of 16 kHz 16-bit mono PCM")]
    TooLong(u64),
    #[error("PCM body must hold whole 16-bit samples (an even number of bytes)")]
    OddLength,
    #[error("cannot read the upload: {0}")]
    Unreadable(String),
    #[error("no healthy speech backend instance; retry later")]
    NoHealthyInstance,
    #[error("every speech backend instance is busy; retry later")]
    InstancesBusy,
    #[error("the instance registry is not answering: {0}")]
    RegistryUnavailable(#[from] actix::MailboxError),
    /// The backend call failed; its own message is the client's.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl SpeechError {
    /// Whether the client broke a rule of the upload (the instance is not to blame).
    fn is_clients(&self) -> bool {
        matches!(
            self,
            SpeechError::Stalled(_)
                | SpeechError::TooSlow(_)
                | SpeechError::BelowMinRate(_)
                | SpeechError::TooLarge(_)
                | SpeechError::TooLong(_)
                | SpeechError::OddLength
                | SpeechError::Unreadable(_)
        )
    }
}

/// What the upload holds.
pub enum Audio {
    /// A file from a form, forwarded as one with its name and type; `received` bytes of
    /// form data were read before it.
    File {
        filename: String,
        content_type: String,
        received: usize,
    },
    /// Raw 16 kHz 16-bit LE mono PCM.
    Pcm,
}

/// The speech path, shared by every HTTP worker.
pub struct SpeechService {
    /// Leases speech instances.
    registry: Addr<InstanceRegistry>,
    limits: SpeechSettings,
}

impl SpeechService {
    pub fn new(registry: Addr<InstanceRegistry>, limits: SpeechSettings) -> SpeechService {
        SpeechService { registry, limits }
    }

    pub fn limits(&self) -> &SpeechSettings {
        &self.limits
    }

    /// When an upload that starts now must be complete.
    pub fn upload_deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + secs(self.limits.max_upload_secs)
    }

    /// A new upload's pace.
    pub fn pace(&self) -> Pace {
        Pace {
            min_rate: self.limits.min_bytes_per_sec,
            started: None,
            received: 0,
        }
    }

    /// The client's next item; a client silent for `read_timeout_secs`, or falling
    /// behind its pace, is cut off.
    pub async fn next_chunk<T, E: Display>(
        &self,
        pace: &mut Pace,
        next: impl Future<Output = Option<Result<T, E>>>,
    ) -> Result<Option<T>, SpeechError> {
        let silence = tokio::time::Instant::now() + secs(self.limits.read_timeout_secs);
        let behind = pace.behind_at().filter(|&at| at < silence);
        match tokio::time::timeout_at(behind.unwrap_or(silence), next).await {
            Err(_) if behind.is_some() => Err(SpeechError::BelowMinRate(pace.min_rate)),
            Err(_) => Err(SpeechError::Stalled(self.limits.read_timeout_secs)),
            Ok(None) => Ok(None),
            Ok(Some(Err(e))) => Err(SpeechError::Unreadable(e.to_string())),
            Ok(Some(Ok(item))) => {
                pace.started.get_or_insert_with(tokio::time::Instant::now);
                Ok(Some(item))
            }
        }
    }

    /// Transcribes `upload` on a free healthy speech instance, in the instance's protocol
    /// (`language`, when known, reaches openai instances). The upload must end by
    /// `deadline`; the backend then has `timeout_secs` to answer.
    #[tracing::instrument(skip_all, fields(instance))]
    pub async fn transcribe<S, E>(
        &self,
        user_id: UserId,
        audio: Audio,
        language: Option<&str>,
        mut upload: S,
        mut pace: Pace,
        deadline: tokio::time::Instant,
    ) -> Result<SpeechToTextResponse, SpeechError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        // Nothing is leased while the client has sent nothing.
        let first = tokio::time::timeout_at(deadline, self.next_chunk(&mut pace, upload.next()))
            .await
            .map_err(|_| SpeechError::TooSlow(self.limits.max_upload_secs))??;
        let asked = tokio::time::Instant::now();
        let lease = self.acquire(user_id).await?;
        // Waiting for the instance is not the client's time.
        pace.shift(asked.elapsed());
        tracing::Span::current().record("instance", lease.shown_url.as_str());
        let (body, stream) = fastwhisper::body_channel(secs(self.limits.timeout_secs));
        let client = CLIENT.with(Clone::clone);
        let (base, model) = (lease.url.clone(), lease.model.clone());
        let target = backends::Target {
            url: &base,
            protocol: lease.protocol,
            model: model.as_deref(),
        };
        let limits = &self.limits;
        // Form data already read, and the most the upload may hold.
        let (mut received, max_bytes, kind) = match &audio {
            Audio::File {
                filename,
                content_type,
                received,
            } => {
                let kind = Upload::File {
                    filename,
                    content_type,
                };
                (*received as u64, limits.max_upload_bytes as u64, kind)
            }
            Audio::Pcm => (0, limits.max_pcm_bytes(), Upload::Pcm),
        };
        let too_much = || match &audio {
            Audio::File { .. } => SpeechError::TooLarge(limits.max_upload_bytes),
            Audio::Pcm => SpeechError::TooLong(limits.max_pcm_seconds),
        };
        let path = backends::transcription_path(target.protocol, kind);
        let call_span = telemetry::backend_span(&format!("{}{path}", base.trim_end_matches('/')));
        let headers = telemetry::propagation_headers(&call_span);
        let framed = backends::transcription(&client, target, kind, language, stream, &headers);
        let pump = async {
            if let Some(opening) = framed.opening {
                body.send(opening).await?;
            }
            let mut next = first;
            while let Some(chunk) = next.take() {
                received += chunk.len() as u64;
                pace.add(chunk.len());
                if received > max_bytes {
                    return Err(too_much());
                }
                body.send(chunk).await?;
                next = self.next_chunk(&mut pace, upload.next()).await?;
            }
            if matches!(kind, Upload::Pcm) && !received.is_multiple_of(2) {
                return Err(SpeechError::OddLength);
            }
            if let Some(closing) = framed.closing {
                body.send(closing).await?;
            }
            Ok(body.finish().await?)
        };
        let answer = self
            .relay(lease, framed.call, pump, deadline)
            .instrument(call_span)
            .await?;
        // PCM is as long as it is; of a file, what the backend heard.
        let (endpoint, seconds) = match kind {
            Upload::Pcm => (
                "pcm",
                received as f64 / crate::settings::PCM_BYTES_PER_SEC as f64,
            ),
            Upload::File { .. } => {
                let last = answer.segments.as_ref().and_then(|s| s.last());
                ("transcribe", last.map_or(0.0, |s| s.end))
            }
        };
        METRICS.speech_audio(endpoint, seconds);
        Ok(answer)
    }

    /// A lease on a free healthy speech instance: refused at once when none is healthy or
    /// too many requests already wait, and after `max_wait_secs` of waiting.
    async fn acquire(&self, user_id: UserId) -> Result<Lease, SpeechError> {
        let request = self.registry.send(Acquire {
            kind: InstanceKind::Speech,
            user_id,
            avoid: None,
            fail_fast: true,
            max_waiting: Some(self.limits.max_waiting),
        });
        // On timeout the request is dropped, which withdraws it from the registry's line.
        match tokio::time::timeout(secs(self.limits.max_wait_secs), request).await {
            Ok(reply) => reply?.map_err(|e| match e {
                AcquireError::NoHealthyInstance => SpeechError::NoHealthyInstance,
                AcquireError::TooManyWaiting | AcquireError::RegistryStopped => {
                    SpeechError::InstancesBusy
                }
            }),
            Err(_) => Err(SpeechError::InstancesBusy),
        }
    }

    /// Runs the backend `call` while `pump` feeds it, then gives the lease back with the
    /// outcome. When the pump fails, the call is dropped mid-body, which aborts the
    /// backend request.
    async fn relay(
        &self,
        lease: Lease,
        call: impl Future<Output = Result<SpeechToTextResponse, BackendError>>,
        pump: impl Future<Output = Result<(), SpeechError>>,
        deadline: tokio::time::Instant,
    ) -> Result<SpeechToTextResponse, SpeechError> {
        let limits = &self.limits;
        let (instance, started) = (lease.instance_id(), Instant::now());
        let pump = tokio::time::timeout_at(deadline, pump);
        tokio::pin!(call, pump);
        let mut uploaded_at = Instant::now();
        let result = tokio::select! {
            // The call first: a backend that already answered (or failed) has the last word.
            biased;
            answer = &mut call => answer.map_err(SpeechError::from),
            pumped = &mut pump => match pumped {
                Err(_) => Err(SpeechError::TooSlow(limits.max_upload_secs)),
                Ok(Err(fault)) => Err(fault),
                Ok(Ok(())) => {
                    uploaded_at = Instant::now();
                    match tokio::time::timeout(secs(limits.timeout_secs), &mut call).await {
                        Ok(answer) => answer.map_err(SpeechError::from),
                        Err(_) => Err(BackendError::Timeout(limits.timeout_secs).into()),
                    }
                }
            },
        };
        let span = tracing::Span::current();
        let outcome = match &result {
            Ok(_) => Some("ok"),
            Err(SpeechError::Backend(error)) => Some(error.kind()),
            // The client's fault or the gateway's: the backend had no say.
            Err(_) => None,
        };
        if let Some(outcome) = outcome {
            METRICS.backend_call(InstanceKind::Speech, instance, outcome, started.elapsed());
        }
        match result {
            Ok(answer) => {
                telemetry::record_backend_outcome(&span, None);
                lease.release(CallOutcome::Success {
                    latency: uploaded_at.elapsed(),
                });
                Ok(answer)
            }
            Err(error) if error.is_clients() => {
                lease.release(CallOutcome::Neutral);
                Err(error)
            }
            Err(SpeechError::Backend(error)) => {
                telemetry::record_backend_outcome(&span, Some(&error));
                lease.release(CallOutcome::from(&error));
                Err(error.into())
            }
            Err(other) => {
                lease.release(CallOutcome::Neutral);
                Err(other)
            }
        }
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Slack an upload gets before its pace is judged: bursts and a slow start are fine.
const PACE_GRACE: Duration = Duration::from_secs(2);

/// How fast an upload must arrive: from its first byte on, at least `min_rate` bytes a
/// second on average, after `PACE_GRACE`. The form data before a file counts too.
pub struct Pace {
    /// 0: no minimum.
    min_rate: u64,
    /// When the first item arrived (shifted by the time spent waiting for an instance).
    started: Option<tokio::time::Instant>,
    received: u64,
}

impl Pace {
    /// Counts bytes received.
    pub fn add(&mut self, bytes: usize) {
        self.received += bytes as u64;
    }

    /// When the upload falls behind its pace unless more arrives.
    fn behind_at(&self) -> Option<tokio::time::Instant> {
        let started = self.started.filter(|_| self.min_rate > 0)?;
        let earned = Duration::from_secs_f64(self.received as f64 / self.min_rate as f64);
        Some(started + PACE_GRACE + earned)
    }

    fn shift(&mut self, by: Duration) {
        if let Some(started) = &mut self.started {
            *started += by;
        }
    }
}
