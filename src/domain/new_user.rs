use serde::Deserialize;

use super::ValidationError;

/// Body of `POST /register`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RegisterRequest {
    /// 3 to 20 characters of A-Z, a-z, 0-9 and _; unique whatever its case.
    #[schema(value_type = String, required = true, pattern = "^[A-Za-z0-9_]{3,20}$",
        example = "user1")]
    pub username: Option<String>,
    /// 8 to 128 characters.
    #[schema(value_type = String, required = true, min_length = 8, max_length = 128,
        example = "pass12345")]
    pub password: Option<String>,
    /// An address (`local@domain.tld`, no spaces, at most 254 characters); blank is none.
    #[schema(
        max_length = 254,
        pattern = "^[\\t\\n\\u000B\\u000C\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]*(?:[^@\\t\\n\\u000B\\u000C\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]+@[^\\t\\n\\u000B\\u000C\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]*\\.[^\\t\\n\\u000B\\u000C\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]*)?[\\t\\n\\u000B\\u000C\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]*$"
    )]
    pub email: Option<String>,
    /// Digits, spaces and `+-()`, at least one digit, at most 32 characters; blank is none.
    #[schema(
        max_length = 32,
        pattern = "^[\\t\\n\\u000B\\u000C\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]*(?:[0-9 +()-]*[0-9][0-9 +()-]*)?[\\t\\n\\u000B\\u000C\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]*$"
    )]
    pub phone: Option<String>,
}

/// A registration whose every field has been checked.
#[derive(Debug)]
pub struct NewUser {
    pub username: String,
    pub password: String,
    pub email: Option<String>,
    pub phone: Option<String>,
}

pub const MIN_PASSWORD_CHARS: usize = 8;
/// Bounds the hashing work one request can cause.
pub const MAX_PASSWORD_CHARS: usize = 128;

impl TryFrom<RegisterRequest> for NewUser {
    type Error = ValidationError;

    fn try_from(request: RegisterRequest) -> Result<Self, Self::Error> {
        let username = request.username.unwrap_or_default();
        check_username(&username)?;
        let password = request.password.unwrap_or_default();
        let chars = password.chars().count();
        if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&chars) {
            return Err(ValidationError(format!(
                "password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters"
            )));
        }
        // Lengths are the values' as sent, blanks and all, as the document says.
        if request
            .email
            .as_ref()
            .is_some_and(|e| e.chars().count() > 254)
        {
            return Err(ValidationError::new("email must be at most 254 characters"));
        }
        if request
            .phone
            .as_ref()
            .is_some_and(|p| p.chars().count() > 32)
        {
            return Err(ValidationError::new("phone must be at most 32 characters"));
        }
        let email = non_blank(request.email);
        if let Some(email) = &email {
            let valid = !email.chars().any(char::is_whitespace)
                && matches!(email.split_once('@'), Some((local, domain)) if !local.is_empty() && domain.contains('.'));
            if !valid {
                return Err(ValidationError::new("email is not a valid address"));
            }
        }
        let phone = non_blank(request.phone);
        if let Some(phone) = &phone {
            let valid = phone.chars().any(|c| c.is_ascii_digit())
                && phone
                    .chars()
                    .all(|c| c.is_ascii_digit() || " +-()".contains(c));
            if !valid {
                return Err(ValidationError::new("phone is not a valid number"));
            }
        }
        Ok(NewUser {
            username,
            password,
            email,
            phone,
        })
    }
}

/// Usernames are 3–20 characters of `[A-Za-z0-9_]`.
pub fn check_username(username: &str) -> Result<(), ValidationError> {
    let valid = (3..=20).contains(&username.len())
        && username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(ValidationError::new(
            "username must be 3 to 20 characters of A-Z, a-z, 0-9 and _",
        ))
    }
}

fn non_blank(value: Option<String>) -> Option<String> {
    value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(username: &str, password: &str) -> RegisterRequest {
        RegisterRequest {
            username: Some(username.into()),
            password: Some(password.into()),
            email: None,
            phone: None,
        }
    }

    #[test]
    fn usernames_and_passwords_are_checked() {
        assert!(NewUser::try_from(request("user_1", "password1")).is_ok());
        assert!(NewUser::try_from(request("ab", "password1")).is_err());
        assert!(NewUser::try_from(request(&"a".repeat(21), "password1")).is_err());
        assert!(NewUser::try_from(request("bad name", "password1")).is_err());
        assert!(NewUser::try_from(request("user_1", "short")).is_err());
    }

    #[test]
    fn email_must_look_like_an_address() {
        let mut r = request("user_1", "password1");
        r.email = Some("nope".into());
        assert!(NewUser::try_from(r).is_err());
        let mut r = request("user_1", "password1");
        r.email = Some("a@b.io".into());
        assert!(NewUser::try_from(r).is_ok());
    }
}
