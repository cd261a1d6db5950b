//! The "openai" protocol: OpenAI-compatible servers (LocalAI, speaches, vLLM, the
//! whisper.cpp and stable-diffusion.cpp servers). Transcripts come from
//! `/v1/audio/transcriptions`.

pub mod transcriptions;
