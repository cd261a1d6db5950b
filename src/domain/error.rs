/// Input that breaks a rule of the domain; the message says which rule, for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

impl ValidationError {
    pub fn new(message: impl Into<String>) -> ValidationError {
        ValidationError(message.into())
    }
}
