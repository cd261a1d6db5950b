//! `POST {base}/v1/audio/transcriptions`: the `model` and `response_format` fields, then
//! the audio as the `file` part, streamed like the fastwhisper upload (the caller feeds a
//! [`BodySender`](crate::backends::fastwhisper::BodySender) as its own client uploads).
//! Raw PCM goes as a WAV file whose header is part of the form's opening bytes, so the
//! samples follow as they arrive. The verbose_json answer is mapped onto our
//! [`SpeechToTextResponse`].

use actix_web::http::header;
use actix_web::web::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Deserializer};

use crate::backends::answers::read_ok_body;
use crate::backends::fastwhisper::{FileForm, Segment, SpeechToTextResponse};
use crate::backends::BackendError;

/// Largest answer read from a server.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// The one answer format mapped onto ours: it alone carries segments and the language.
const RESPONSE_FORMAT: &str = "verbose_json";
/// What ESP32 devices record: 16 kHz, 16-bit little-endian, mono.
const PCM_SAMPLE_RATE: u32 = 16_000;
const PCM_CHANNELS: u16 = 1;
const PCM_BITS_PER_SAMPLE: u16 = 16;
/// RIFF and data chunk size of a WAV streamed before its length is known.
const UNKNOWN_LENGTH: u32 = u32::MAX;

/// The multipart framing of one transcription request: text fields, then the file part.
pub struct TranscriptionForm {
    file: FileForm,
    model: String,
}

impl TranscriptionForm {
    /// A form asking `model` for a verbose_json transcript.
    pub fn new(model: &str) -> TranscriptionForm {
        TranscriptionForm {
            file: FileForm::default(),
            model: model.to_string(),
        }
    }

    /// The request's Content-Type, naming the boundary.
    pub fn content_type(&self) -> String {
        self.file.content_type()
    }

    /// Everything before the file's bytes: the text fields, then the file part's header.
    pub fn opening(&self, filename: &str, content_type: &str) -> Bytes {
        let mut opening = Vec::new();
        opening.extend_from_slice(&self.file.text_field("model", &self.model));
        opening.extend_from_slice(&self.file.text_field("response_format", RESPONSE_FORMAT));
        opening.extend_from_slice(&self.file.opening(filename, content_type));
        Bytes::from(opening)
    }

    /// [`Self::opening`] for raw 16 kHz 16-bit mono PCM sent as `audio.wav`: it ends with
    /// the WAV header, so the PCM itself follows unchanged as it arrives.
    pub fn pcm_opening(&self) -> Bytes {
        let mut opening = self.opening("audio.wav", "audio/wav").to_vec();
        opening.extend_from_slice(&wav_header_streaming());
        Bytes::from(opening)
    }

    /// Everything after the file's bytes.
    pub fn closing(&self) -> Bytes {
        self.file.closing()
    }
}

/// The 44-byte header of a 16 kHz 16-bit mono PCM WAV of unknown length (RIFF and data
/// sizes 0xFFFFFFFF, the streaming convention readers take as "until the end").
pub fn wav_header_streaming() -> [u8; 44] {
    let block_align = PCM_CHANNELS * PCM_BITS_PER_SAMPLE / 8;
    let byte_rate = PCM_SAMPLE_RATE * block_align as u32;
    let header = [
        b"RIFF".as_slice(),
        &UNKNOWN_LENGTH.to_le_bytes(),
        b"WAVE",
        b"fmt ",
        &16u32.to_le_bytes(), // fmt chunk size
        &1u16.to_le_bytes(),  // format: integer PCM
        &PCM_CHANNELS.to_le_bytes(),
        &PCM_SAMPLE_RATE.to_le_bytes(),
        &byte_rate.to_le_bytes(),
        &block_align.to_le_bytes(),
        &PCM_BITS_PER_SAMPLE.to_le_bytes(),
        b"data",
        &UNKNOWN_LENGTH.to_le_bytes(),
    ]
    .concat();
    header.try_into().expect("a WAV header is 44 bytes")
}

/// `POST {base}/v1/audio/transcriptions` with a body framed by a [`TranscriptionForm`]
/// whose [`TranscriptionForm::content_type`] is `content_type`.
pub async fn transcribe(
    client: &awc::Client,
    base: &str,
    content_type: &str,
    body: impl Stream<Item = Result<Bytes, std::io::Error>> + 'static,
) -> Result<SpeechToTextResponse, BackendError> {
    let mut response = client
        .post(format!(
            "{}/v1/audio/transcriptions",
            base.trim_end_matches('/')
        ))
        .insert_header((header::CONTENT_TYPE, content_type))
        .send_stream(body)
        .await
        .map_err(|e| BackendError::Transport(e.to_string()))?;
    let answer = read_ok_body(&mut response, MAX_ANSWER_BYTES, "transcript").await?;
    serde_json::from_slice::<VerboseTranscription>(&answer)
        .map(SpeechToTextResponse::from)
        .map_err(|e| BackendError::BadAnswer(format!("transcript is not verbose_json: {e}")))
}

/// A verbose_json transcript, as servers actually send it.
#[derive(Deserialize)]
struct VerboseTranscription {
    #[serde(default)]
    text: String,
    language: Option<String>,
    // whisper.cpp's server says "detected_language_probability".
    #[serde(alias = "detected_language_probability")]
    language_probability: Option<f64>,
    duration: Option<Seconds>,
    segments: Option<Vec<VerboseSegment>>,
}

#[derive(Deserialize)]
struct VerboseSegment {
    start: Seconds,
    end: Seconds,
    text: String,
}

/// A time in seconds, sent as a number or (by vLLM and OpenAI's own spec) as a string.
struct Seconds(f64);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum NumberOrText {
            Number(f64),
            Text(String),
        }
        let seconds = match NumberOrText::deserialize(deserializer)? {
            NumberOrText::Number(seconds) => seconds,
            NumberOrText::Text(text) => text.trim().parse().map_err(|_| {
                serde::de::Error::custom(format!("{text:?} is not a number of seconds"))
            })?,
        };
        if !seconds.is_finite() {
            return Err(serde::de::Error::custom("seconds must be a finite number"));
        }
        Ok(Seconds(seconds))
    }
}

impl From<VerboseTranscription> for SpeechToTextResponse {
    /// Segments as given; a transcript with text but no segments becomes one segment
    /// over the whole audio. The language passes through as named ("en" or "english").
    fn from(answer: VerboseTranscription) -> SpeechToTextResponse {
        let mut segments: Vec<Segment> = answer
            .segments
            .unwrap_or_default()
            .into_iter()
            .map(|segment| Segment {
                start: segment.start.0,
                end: segment.end.0,
                text: segment.text,
            })
            .collect();
        let text = answer.text.trim();
        if segments.is_empty() && !text.is_empty() {
            segments.push(Segment {
                start: 0.0,
                end: answer.duration.map_or(0.0, |duration| duration.0),
                text: text.to_string(),
            });
        }
        SpeechToTextResponse {
            code: 0,
            message: None,
            language: answer.language.filter(|language| !language.is_empty()),
            language_probability: answer.language_probability,
            segments: Some(segments),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;
    use crate::backends::fastwhisper::body_channel;
    use crate::simulator::{SimBackend, SimConfig, TranscriptionSeen, WavHeaderSeen};

    fn sim() -> SimBackend {
        let config = SimConfig {
            latency_ms: 0,
            ..SimConfig::default()
        };
        SimBackend::start(config, "127.0.0.1", 0).unwrap()
    }

    /// Uploads `opening`, then `chunks`, then the form's closing, as one streamed body.
    async fn upload(
        sim: &SimBackend,
        form: &TranscriptionForm,
        opening: Bytes,
        chunks: Vec<Vec<u8>>,
    ) -> Result<SpeechToTextResponse, BackendError> {
        let (sender, body) = body_channel(Duration::from_secs(5));
        let (client, base, content_type) =
            (crate::backends::client(), sim.url(), form.content_type());
        let call = transcribe(&client, &base, &content_type, body);
        let feed = async {
            sender.send(opening).await?;
            for chunk in chunks {
                sender.send(Bytes::from(chunk)).await?;
            }
            sender.send(form.closing()).await?;
            sender.finish().await
        };
        let (answer, fed) = tokio::join!(call, feed);
        fed.expect("the upload went through");
        answer
    }

    #[actix_web::test]
    async fn an_uploaded_file_is_transcribed_into_our_segments() {
        let sim = sim();
        let form = TranscriptionForm::new("sim-whisper");
        let opening = form.opening("memo.mp3", "audio/mpeg");
        // Three seconds' worth of 16 kHz 16-bit audio, as the simulator counts.
        let answer = upload(&sim, &form, opening, vec![vec![7; 96_000]])
            .await
            .unwrap();
        assert_eq!(answer.code, 0);
        assert_eq!(answer.language.as_deref(), Some("english"));
        assert_eq!(answer.language_probability, None);
        assert_eq!(
            spans(&answer),
            [
                (0.0, 2.5, "simulated segment 1"),
                (2.5, 3.0, "simulated segment 2")
            ]
        );
        assert_eq!(
            sim.last_transcription().unwrap(),
            TranscriptionSeen {
                fields: vec!["model".into(), "response_format".into(), "file".into()],
                model: Some("sim-whisper".into()),
                response_format: Some("verbose_json".into()),
                language: None,
                filename: Some("memo.mp3".into()),
                file_content_type: Some("audio/mpeg".into()),
                file_bytes: 96_000,
                wav_header: WavHeaderSeen::NotWav,
            }
        );
    }

    #[actix_web::test]
    async fn pcm_streams_as_a_wav_the_backend_hears_before_the_last_chunk() {
        let sim = sim();
        let form = TranscriptionForm::new("sim-whisper");
        let (sender, body) = body_channel(Duration::from_secs(5));
        let (client, base, content_type) =
            (crate::backends::client(), sim.url(), form.content_type());
        let call = transcribe(&client, &base, &content_type, body);
        let received = || {
            sim.state
                .transcription_bytes_received
                .load(Ordering::SeqCst)
        };
        let feed = async {
            sender.send(form.pcm_opening()).await?;
            // Four seconds of PCM in ten chunks; before the last one the simulator must
            // already have some: a client that buffered the body could not pass this.
            let mut heard_early = false;
            for chunk in 0..10 {
                if chunk == 9 {
                    for _ in 0..500 {
                        if received() > 0 {
                            heard_early = true;
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                sender.send(Bytes::from(vec![0u8; 12_800])).await?;
            }
            sender.send(form.closing()).await?;
            sender.finish().await?;
            Ok::<_, BackendError>(heard_early)
        };
        let (answer, heard_early) = tokio::join!(call, feed);
        assert!(
            heard_early.unwrap(),
            "the backend had nothing before the last chunk"
        );
        let answer = answer.unwrap();
        assert_eq!(answer.segments.as_ref().unwrap().last().unwrap().end, 4.0);
        let seen = sim.last_transcription().unwrap();
        assert_eq!(seen.wav_header, WavHeaderSeen::Pcm16kMono);
        assert_eq!(
            (seen.filename.as_deref(), seen.file_content_type.as_deref()),
            (Some("audio.wav"), Some("audio/wav"))
        );
        assert_eq!(seen.file_bytes, 44 + 128_000);
        assert_eq!(received(), 44 + 128_000);
    }

    #[actix_web::test]
    async fn under_a_second_of_audio_is_the_servers_refusal() {
        let sim = sim();
        let form = TranscriptionForm::new("sim-whisper");
        let short = upload(&sim, &form, form.pcm_opening(), vec![vec![0; 16_000]]).await;
        match short {
            Err(BackendError::Status {
                status: 400,
                detail,
            }) => {
                assert!(detail.contains("audio too short"), "{detail}")
            }
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[actix_web::test]
    async fn a_malformed_transcript_is_a_bad_answer() {
        let sim = sim();
        sim.set_malformed_json(true);
        let form = TranscriptionForm::new("sim-whisper");
        let opening = form.opening("memo.mp3", "audio/mpeg");
        match upload(&sim, &form, opening, vec![vec![7; 64_000]]).await {
            Err(BackendError::BadAnswer(reason)) => {
                assert!(reason.contains("not verbose_json"), "{reason}")
            }
            other => panic!("expected a bad answer, got {other:?}"),
        }
    }

    #[actix_web::test]
    async fn a_failing_server_is_a_status_error() {
        let sim = sim();
        sim.set_failure_rate(1.0);
        let form = TranscriptionForm::new("sim-whisper");
        let opening = form.opening("memo.mp3", "audio/mpeg");
        let failed = upload(&sim, &form, opening, vec![vec![7; 64_000]]).await;
        assert!(
            matches!(failed, Err(BackendError::Status { status: 500, .. })),
            "{failed:?}"
        );
    }

    fn mapped(answer: &str) -> SpeechToTextResponse {
        serde_json::from_str::<VerboseTranscription>(answer)
            .unwrap()
            .into()
    }

    fn spans(response: &SpeechToTextResponse) -> Vec<(f64, f64, &str)> {
        let segments = response.segments.as_ref().unwrap();
        segments
            .iter()
            .map(|s| (s.start, s.end, s.text.as_str()))
            .collect()
    }

    #[test]
    fn the_streaming_wav_header_is_16_khz_mono_16_bit_pcm_of_unknown_length() {
        let header = wav_header_streaming();
        let expected: [u8; 44] = [
            b'R', b'I', b'F', b'F', 0xFF, 0xFF, 0xFF, 0xFF, b'W', b'A', b'V', b'E', //
            b'f', b'm', b't', b' ', 16, 0, 0, 0, 1, 0, 1, 0, //
            0x80, 0x3E, 0, 0, 0x00, 0x7D, 0, 0, 2, 0, 16, 0, //
            b'd', b'a', b't', b'a', 0xFF, 0xFF, 0xFF, 0xFF,
        ];
        assert_eq!(header, expected);
        // Read back field by field, as a WAV reader would.
        let u16_at = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]);
        let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap());
        assert_eq!(u32_at(4), u32::MAX, "RIFF size: unknown");
        assert_eq!(u32_at(16), 16, "fmt chunk size");
        assert_eq!(u16_at(20), 1, "integer PCM");
        assert_eq!(u16_at(22), 1, "channels");
        assert_eq!(u32_at(24), 16_000, "sample rate");
        assert_eq!(u32_at(28), 32_000, "byte rate");
        assert_eq!(u16_at(32), 2, "block align");
        assert_eq!(u16_at(34), 16, "bits per sample");
        assert_eq!(u32_at(40), u32::MAX, "data size: unknown");
    }

    #[test]
    fn the_text_fields_come_before_the_file_part() {
        let form = TranscriptionForm::new("Systran/faster-whisper-small");
        let boundary = form
            .content_type()
            .strip_prefix("multipart/form-data; boundary=")
            .unwrap()
            .to_string();
        let opening = form.opening("memo.mp3", "audio/mpeg");
        assert_eq!(
            std::str::from_utf8(&opening).unwrap(),
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n\
                 Systran/faster-whisper-small\r\n\
                 --{boundary}\r\nContent-Disposition: form-data; name=\"response_format\"\r\n\r\n\
                 verbose_json\r\n\
                 --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"memo.mp3\"\r\n\
                 Content-Type: audio/mpeg\r\n\r\n"
            )
        );
        assert_eq!(form.closing(), format!("\r\n--{boundary}--\r\n"));
    }

    #[test]
    fn pcm_goes_as_a_wav_file_whose_header_ends_the_opening() {
        let form = TranscriptionForm::new("whisper-1");
        let opening = form.pcm_opening();
        let (head, header) = opening.split_at(opening.len() - 44);
        assert_eq!(header, wav_header_streaming());
        assert_eq!(head, form.opening("audio.wav", "audio/wav"));
        let head = std::str::from_utf8(head).unwrap();
        assert!(head.ends_with("filename=\"audio.wav\"\r\nContent-Type: audio/wav\r\n\r\n"));
    }

    #[test]
    fn verbose_json_maps_onto_our_segments() {
        let answer = mapped(
            r#"{"task":"transcribe","language":"english","duration":5.0,"text":"Hello there. General Kenobi.",
                "segments":[{"id":0,"seek":0,"start":0.0,"end":2.5,"text":" Hello there.","tokens":[1,2],
                             "temperature":0.0,"avg_logprob":-0.2,"compression_ratio":1.1,"no_speech_prob":0.01},
                            {"id":1,"start":2.5,"end":5.0,"text":" General Kenobi."}]}"#,
        );
        assert_eq!(answer.code, 0);
        assert_eq!(answer.language.as_deref(), Some("english"));
        assert_eq!(answer.language_probability, None);
        assert_eq!(
            spans(&answer),
            [(0.0, 2.5, " Hello there."), (2.5, 5.0, " General Kenobi.")]
        );
    }

    #[test]
    fn durations_and_times_may_be_strings() {
        // vLLM's example answer sends the duration as a string.
        let answer = mapped(r#"{"language":"en","duration":"3.25","text":"hi","segments":[]}"#);
        assert_eq!(spans(&answer), [(0.0, 3.25, "hi")]);
        let answer =
            mapped(r#"{"text":"x","segments":[{"start":"0.5","end":" 1.5 ","text":"x"}]}"#);
        assert_eq!(spans(&answer), [(0.5, 1.5, "x")]);
        for bad in [r#"{"duration":"soon"}"#, r#"{"duration":"NaN"}"#] {
            assert!(
                serde_json::from_str::<VerboseTranscription>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn text_without_segments_becomes_one_segment() {
        let answer = mapped(r#"{"text":" Hello. ","duration":4}"#);
        assert_eq!(spans(&answer), [(0.0, 4.0, "Hello.")]);
        let answer = mapped(r#"{"text":"Hello.","segments":null}"#);
        assert_eq!(spans(&answer), [(0.0, 0.0, "Hello.")]);
        // Silence: no text, no segments, and no made-up segment either.
        let answer = mapped(r#"{"text":"","duration":2.0,"segments":[]}"#);
        assert_eq!(spans(&answer), []);
    }

    #[test]
    fn a_language_probability_is_kept_when_given() {
        let answer = mapped(r#"{"text":"","language":"fr","language_probability":0.93}"#);
        assert_eq!(answer.language_probability, Some(0.93));
        let answer =
            mapped(r#"{"text":"","language":"french","detected_language_probability":0.5}"#);
        assert_eq!(answer.language.as_deref(), Some("french"));
        assert_eq!(answer.language_probability, Some(0.5));
        assert_eq!(mapped(r#"{"text":"","language":""}"#).language, None);
    }
}
