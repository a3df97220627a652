//! AMQP errors as RabbitMQ reports them: a reply code, a text starting with the code's name, and the
//! class/method that caused it. Soft codes close the channel, hard codes the connection (spec 1.9).

use std::fmt;

use crate::constants::reply;

/// An error to be reported to the client with channel.close or connection.close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpError {
    pub code: u16,
    /// The full reply text, e.g. `NOT_FOUND - no queue 'q' in vhost '/'`.
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

impl AmqpError {
    /// Builds an error whose text is `NAME - detail`, as RabbitMQ's `rabbit_misc:protocol_error` does.
    pub fn new(code: u16, detail: impl fmt::Display) -> Self {
        let mut text = format!("{} - {}", reply::name(code), detail);
        truncate_short_str(&mut text);
        AmqpError {
            code,
            text,
            class_id: 0,
            method_id: 0,
        }
    }

    /// Records the method that caused the error (the class-id/method-id fields of the close).
    pub fn during(mut self, (class_id, method_id): (u16, u16)) -> Self {
        if self.class_id == 0 && self.method_id == 0 {
            self.class_id = class_id;
            self.method_id = method_id;
        }
        self
    }

    pub fn is_soft(&self) -> bool {
        reply::is_soft(self.code)
    }

    pub fn not_found(detail: impl fmt::Display) -> Self {
        Self::new(reply::NOT_FOUND, detail)
    }
    pub fn precondition(detail: impl fmt::Display) -> Self {
        Self::new(reply::PRECONDITION_FAILED, detail)
    }
    pub fn access_refused(detail: impl fmt::Display) -> Self {
        Self::new(reply::ACCESS_REFUSED, detail)
    }
    pub fn resource_locked(detail: impl fmt::Display) -> Self {
        Self::new(reply::RESOURCE_LOCKED, detail)
    }
    pub fn not_allowed(detail: impl fmt::Display) -> Self {
        Self::new(reply::NOT_ALLOWED, detail)
    }
    pub fn command_invalid(detail: impl fmt::Display) -> Self {
        Self::new(reply::COMMAND_INVALID, detail)
    }
    pub fn channel_error(detail: impl fmt::Display) -> Self {
        Self::new(reply::CHANNEL_ERROR, detail)
    }
    pub fn unexpected_frame(detail: impl fmt::Display) -> Self {
        Self::new(reply::UNEXPECTED_FRAME, detail)
    }
    pub fn frame_error(detail: impl fmt::Display) -> Self {
        Self::new(reply::FRAME_ERROR, detail)
    }
    pub fn syntax_error(detail: impl fmt::Display) -> Self {
        Self::new(reply::SYNTAX_ERROR, detail)
    }
    pub fn not_implemented(detail: impl fmt::Display) -> Self {
        Self::new(reply::NOT_IMPLEMENTED, detail)
    }
    pub fn internal(detail: impl fmt::Display) -> Self {
        Self::new(reply::INTERNAL_ERROR, detail)
    }
}

impl fmt::Display for AmqpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.text, self.code)
    }
}

impl std::error::Error for AmqpError {}

/// Reply texts are short strings: RabbitMQ keeps the first 252 octets and appends "..."
/// (`rabbit_binary_generator:amqp_exception_explanation`); the cut respects character boundaries.
fn truncate_short_str(text: &mut String) {
    if text.len() > 255 {
        let mut end = 252;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
}

pub type AmqpResult<T> = Result<T, AmqpError>;

/// Renders up to 16 octets the way RabbitMQ's frame errors print a payload (`all octets = <<"abc">>` or
/// `first 16 octets = <<1,2,3>>`), so texts read the same as RabbitMQ's.
pub fn octets_snippet(payload: &[u8]) -> String {
    let (label, shown) = if payload.len() > 16 {
        ("first 16", &payload[..16])
    } else {
        ("all", payload)
    };
    let printable = !shown.is_empty()
        && shown
            .iter()
            .all(|b| (0x20..0x7f).contains(b) && *b != b'"' && *b != b'\\');
    let body = if printable {
        format!("\"{}\"", String::from_utf8_lossy(shown))
    } else {
        shown
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    format!("{label} octets = <<{body}>>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_carry_the_code_name_and_fit_a_short_string() {
        let e = AmqpError::not_found("no queue 'q' in vhost '/'").during((50, 10));
        assert_eq!(e.text, "NOT_FOUND - no queue 'q' in vhost '/'");
        assert!(e.is_soft());
        assert_eq!((e.class_id, e.method_id), (50, 10));
        let long = AmqpError::frame_error("é".repeat(300));
        assert!(long.text.len() <= 255 && long.text.ends_with("...") && !long.is_soft());
        assert_eq!(octets_snippet(b"hello"), "all octets = <<\"hello\">>");
        assert_eq!(octets_snippet(&[1, 2]), "all octets = <<1,2>>");
        assert_eq!(
            octets_snippet(&[0; 20]).split(" = ").next(),
            Some("first 16 octets")
        );
    }
}
