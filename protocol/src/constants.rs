//! Numbers fixed by the AMQP 0-9-1 specification (section 4.2 and the reply-code table).

/// The 8 bytes a 0-9-1 client must send first; a server answers a wrong header with these bytes.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// The smallest frame_max a peer may negotiate, and the limit that applies until tune-ok.
pub const FRAME_MIN_SIZE: u32 = 4096;
/// Frame header (type, channel, size) plus the frame-end octet.
pub const FRAME_OVERHEAD: u32 = 8;
pub(crate) const FRAME_END: u8 = 0xCE;

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;

pub(crate) const CLASS_CONNECTION: u16 = 10;
pub(crate) const CLASS_CHANNEL: u16 = 20;
pub(crate) const CLASS_EXCHANGE: u16 = 40;
pub(crate) const CLASS_QUEUE: u16 = 50;
pub(crate) const CLASS_BASIC: u16 = 60;
pub(crate) const CLASS_CONFIRM: u16 = 85;
pub(crate) const CLASS_TX: u16 = 90;

/// Reply codes (AMQP 0-9-1 section 1.9 "constants"); names as RabbitMQ prints them in reply texts.
pub mod reply {
    pub(crate) const REPLY_SUCCESS: u16 = 200;
    pub(crate) const CONTENT_TOO_LARGE: u16 = 311;
    pub const NO_ROUTE: u16 = 312;
    pub(crate) const NO_CONSUMERS: u16 = 313;
    pub const CONNECTION_FORCED: u16 = 320;
    pub(crate) const INVALID_PATH: u16 = 402;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const FRAME_ERROR: u16 = 501;
    pub(crate) const SYNTAX_ERROR: u16 = 502;
    pub const COMMAND_INVALID: u16 = 503;
    pub const CHANNEL_ERROR: u16 = 504;
    pub const UNEXPECTED_FRAME: u16 = 505;
    pub(crate) const RESOURCE_ERROR: u16 = 506;
    pub const NOT_ALLOWED: u16 = 530;
    pub const NOT_IMPLEMENTED: u16 = 540;
    pub(crate) const INTERNAL_ERROR: u16 = 541;

    /// The symbolic name RabbitMQ puts in front of a reply text ("NOT_FOUND - no queue ...").
    pub fn name(code: u16) -> &'static str {
        match code {
            REPLY_SUCCESS => "OK",
            CONTENT_TOO_LARGE => "CONTENT_TOO_LARGE",
            NO_ROUTE => "NO_ROUTE",
            NO_CONSUMERS => "NO_CONSUMERS",
            CONNECTION_FORCED => "CONNECTION_FORCED",
            INVALID_PATH => "INVALID_PATH",
            ACCESS_REFUSED => "ACCESS_REFUSED",
            NOT_FOUND => "NOT_FOUND",
            RESOURCE_LOCKED => "RESOURCE_LOCKED",
            PRECONDITION_FAILED => "PRECONDITION_FAILED",
            FRAME_ERROR => "FRAME_ERROR",
            SYNTAX_ERROR => "SYNTAX_ERROR",
            COMMAND_INVALID => "COMMAND_INVALID",
            CHANNEL_ERROR => "CHANNEL_ERROR",
            UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
            RESOURCE_ERROR => "RESOURCE_ERROR",
            NOT_ALLOWED => "NOT_ALLOWED",
            NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
            _ => "INTERNAL_ERROR",
        }
    }

    /// Soft errors close only the channel (spec 1.9); everything else closes the connection.
    pub fn is_soft(code: u16) -> bool {
        matches!(
            code,
            CONTENT_TOO_LARGE
                | NO_ROUTE
                | NO_CONSUMERS
                | ACCESS_REFUSED
                | NOT_FOUND
                | RESOURCE_LOCKED
                | PRECONDITION_FAILED
        )
    }
}
