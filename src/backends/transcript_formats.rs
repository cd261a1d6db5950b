//! Our transcript ([`SpeechToTextResponse`]) in the `response_format`s of OpenAI's
//! transcription API: `json`, `text`, `verbose_json`, `srt` and `vtt`.

use std::str::FromStr;

use serde_json::{json, Value};

use super::fastwhisper::{Segment, SpeechToTextResponse};

/// A `response_format` of OpenAI's transcription API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TranscriptFormat {
    /// OpenAI's default.
    #[default]
    Json,
    Text,
    VerboseJson,
    Srt,
    Vtt,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("response_format must be one of json, text, verbose_json, srt, vtt (got {0:?})")]
pub struct UnknownFormat(pub String);

impl FromStr for TranscriptFormat {
    type Err = UnknownFormat;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "json" => Ok(TranscriptFormat::Json),
            "text" => Ok(TranscriptFormat::Text),
            "verbose_json" => Ok(TranscriptFormat::VerboseJson),
            "srt" => Ok(TranscriptFormat::Srt),
            "vtt" => Ok(TranscriptFormat::Vtt),
            other => Err(UnknownFormat(other.to_string())),
        }
    }
}

impl TranscriptFormat {
    /// The Content-Type of a transcript in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            TranscriptFormat::Json | TranscriptFormat::VerboseJson => "application/json",
            TranscriptFormat::Text | TranscriptFormat::Srt => "text/plain; charset=utf-8",
            TranscriptFormat::Vtt => "text/vtt; charset=utf-8",
        }
    }

    /// The transcript rendered in this format.
    pub fn render(self, transcript: &SpeechToTextResponse) -> String {
        match self {
            TranscriptFormat::Json => json_format(transcript).to_string(),
            TranscriptFormat::Text => text_format(transcript),
            TranscriptFormat::VerboseJson => verbose_json_format(transcript).to_string(),
            TranscriptFormat::Srt => srt_format(transcript),
            TranscriptFormat::Vtt => vtt_format(transcript),
        }
    }
}

fn segments(transcript: &SpeechToTextResponse) -> &[Segment] {
    transcript.segments.as_deref().unwrap_or_default()
}

/// The whole text: the segments' texts, trimmed, joined by single spaces.
pub fn full_text(transcript: &SpeechToTextResponse) -> String {
    segments(transcript)
        .iter()
        .map(|segment| segment.text.trim())
        .filter(|text| !text.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `json`: `{"text": ...}`.
pub fn json_format(transcript: &SpeechToTextResponse) -> Value {
    json!({ "text": full_text(transcript) })
}

/// `text`: the whole text as one line.
pub fn text_format(transcript: &SpeechToTextResponse) -> String {
    format!("{}\n", full_text(transcript))
}

/// `verbose_json`: task, language, duration (the end of the last segment), text and
/// numbered segments.
pub fn verbose_json_format(transcript: &SpeechToTextResponse) -> Value {
    let segments = segments(transcript);
    let numbered: Vec<Value> = segments
        .iter()
        .enumerate()
        .map(|(id, segment)| {
            json!({"id": id, "start": segment.start, "end": segment.end, "text": segment.text})
        })
        .collect();
    json!({
        "task": "transcribe",
        "language": transcript.language,
        "duration": segments.iter().map(|segment| segment.end).fold(0.0, f64::max),
        "text": full_text(transcript),
        "segments": numbered,
    })
}

/// `srt`: numbered cues, times as `00:00:01,500`.
pub fn srt_format(transcript: &SpeechToTextResponse) -> String {
    let mut out = String::new();
    for (number, segment) in cues(transcript).enumerate() {
        out.push_str(&format!(
            "{}\n{} --> {}\n{}\n\n",
            number + 1,
            timestamp(segment.start, ','),
            timestamp(segment.end, ','),
            cue_text(&segment.text),
        ));
    }
    out
}

/// `vtt`: a `WEBVTT` header, then cues with times as `00:00:01.500`.
pub fn vtt_format(transcript: &SpeechToTextResponse) -> String {
    let mut out = String::from("WEBVTT\n\n");
    for segment in cues(transcript) {
        // Cue text is markup in WebVTT, and "-->" would end it as a timing line.
        let text = cue_text(&segment.text)
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        out.push_str(&format!(
            "{} --> {}\n{text}\n\n",
            timestamp(segment.start, '.'),
            timestamp(segment.end, '.'),
        ));
    }
    out
}

/// The segments worth a subtitle cue: those with text.
fn cues(transcript: &SpeechToTextResponse) -> impl Iterator<Item = &Segment> {
    segments(transcript)
        .iter()
        .filter(|segment| !segment.text.trim().is_empty())
}

/// A segment's text as cue lines: a blank line would end the cue early.
fn cue_text(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `seconds` as `HH:MM:SS` and milliseconds after `separator`; negative or not-a-number
/// times are 0.
fn timestamp(seconds: f64, separator: char) -> String {
    let millis = (seconds.max(0.0) * 1000.0).round() as u64;
    let (hours, rest) = (millis / 3_600_000, millis % 3_600_000);
    let (minutes, rest) = (rest / 60_000, rest % 60_000);
    let (secs, millis) = (rest / 1000, rest % 1000);
    format!("{hours:02}:{minutes:02}:{secs:02}{separator}{millis:03}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript(segments: &[(f64, f64, &str)]) -> SpeechToTextResponse {
        SpeechToTextResponse {
            code: 0,
            message: None,
            language: Some("en".into()),
            language_probability: Some(0.98),
            segments: Some(
                segments
                    .iter()
                    .map(|&(start, end, text)| Segment {
                        start,
                        end,
                        text: text.into(),
                    })
                    .collect(),
            ),
        }
    }

    fn two_segments() -> SpeechToTextResponse {
        transcript(&[
            (0.0, 1.5, " Hello there."),
            (1.5, 3723.25, " General Kenobi."),
        ])
    }

    #[test]
    fn formats_are_known_by_their_api_names() {
        assert_eq!("verbose_json".parse(), Ok(TranscriptFormat::VerboseJson));
        assert_eq!("vtt".parse(), Ok(TranscriptFormat::Vtt));
        assert_eq!(
            "xml".parse::<TranscriptFormat>(),
            Err(UnknownFormat("xml".into()))
        );
        assert_eq!(TranscriptFormat::default(), TranscriptFormat::Json);
        assert_eq!(
            TranscriptFormat::Vtt.content_type(),
            "text/vtt; charset=utf-8"
        );
    }

    #[test]
    fn json_and_text_carry_the_whole_text() {
        let transcript = two_segments();
        assert_eq!(
            json_format(&transcript),
            json!({"text": "Hello there. General Kenobi."})
        );
        assert_eq!(text_format(&transcript), "Hello there. General Kenobi.\n");
        assert_eq!(
            TranscriptFormat::Json.render(&transcript),
            r#"{"text":"Hello there. General Kenobi."}"#
        );
    }

    #[test]
    fn verbose_json_numbers_the_segments() {
        assert_eq!(
            verbose_json_format(&two_segments()),
            json!({
                "task": "transcribe", "language": "en", "duration": 3723.25,
                "text": "Hello there. General Kenobi.",
                "segments": [
                    {"id": 0, "start": 0.0, "end": 1.5, "text": " Hello there."},
                    {"id": 1, "start": 1.5, "end": 3723.25, "text": " General Kenobi."},
                ],
            })
        );
        let empty = verbose_json_format(&transcript(&[]));
        assert_eq!(
            (&empty["duration"], &empty["text"]),
            (&json!(0.0), &json!(""))
        );
    }

    #[test]
    fn srt_cues_are_numbered_with_comma_milliseconds() {
        assert_eq!(
            srt_format(&two_segments()),
            "1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n\
             2\n00:00:01,500 --> 01:02:03,250\nGeneral Kenobi.\n\n"
        );
    }

    #[test]
    fn vtt_has_its_header_dot_milliseconds_and_escaped_text() {
        assert_eq!(
            vtt_format(&two_segments()),
            "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there.\n\n\
             00:00:01.500 --> 01:02:03.250\nGeneral Kenobi.\n\n"
        );
        let tricky = transcript(&[(0.0, 1.0, "a --> b & <c>\n\n d")]);
        assert_eq!(
            vtt_format(&tricky),
            "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\na --&gt; b &amp; &lt;c&gt;\nd\n\n"
        );
        assert_eq!(vtt_format(&transcript(&[])), "WEBVTT\n\n");
    }

    #[test]
    fn subtitles_skip_empty_segments_and_keep_cues_whole() {
        let transcript = transcript(&[(0.0, 1.0, "   "), (1.0, 2.0, "one\n\ntwo")]);
        assert_eq!(
            srt_format(&transcript),
            "1\n00:00:01,000 --> 00:00:02,000\none\ntwo\n\n"
        );
    }

    #[test]
    fn timestamps_round_to_the_millisecond() {
        assert_eq!(timestamp(1.5, ','), "00:00:01,500");
        assert_eq!(timestamp(59.9996, '.'), "00:01:00.000");
        assert_eq!(timestamp(-3.0, ','), "00:00:00,000");
        assert_eq!(timestamp(f64::NAN, ','), "00:00:00,000");
        assert_eq!(timestamp(360_000.0, '.'), "100:00:00.000");
    }
}
