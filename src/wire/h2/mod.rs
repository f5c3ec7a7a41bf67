//! HTTP/2 (RFC 9113), sans-IO: bytes in, events and bytes out, no sockets and no clock of its
//! own. [`hpack`] decodes request heads and encodes response heads, [`frame`] reads and writes
//! frames, [`conn`] is one connection's state machine (preface, SETTINGS, streams, flow
//! control, and the defences against hostile peers).

pub mod bridge;
pub mod conn;
pub mod frame;
pub mod hpack;
pub mod huffman;

#[cfg(test)]
mod conformance;

/// An HTTP/2 error code (RFC 9113 §7), as carried by RST_STREAM and GOAWAY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    /// Graceful shutdown, or no error.
    NoError = 0x0,
    /// A protocol error not covered by a more specific code.
    ProtocolError = 0x1,
    /// An unexpected internal error.
    InternalError = 0x2,
    /// The peer broke flow control.
    FlowControlError = 0x3,
    /// SETTINGS were not acknowledged in time.
    SettingsTimeout = 0x4,
    /// A frame arrived on a half-closed stream.
    StreamClosed = 0x5,
    /// A frame had the wrong size.
    FrameSizeError = 0x6,
    /// The stream was refused before any processing.
    RefusedStream = 0x7,
    /// The stream is no longer needed.
    Cancel = 0x8,
    /// The header compression context could not be kept.
    CompressionError = 0x9,
    /// The CONNECT tunnel was reset.
    ConnectError = 0xa,
    /// The peer behaves in a way that may generate excessive load.
    EnhanceYourCalm = 0xb,
    /// The transport does not meet minimum security requirements.
    InadequateSecurity = 0xc,
    /// HTTP/1.1 is required instead.
    Http11Required = 0xd,
}

impl ErrorCode {
    /// The code for a number received on the wire; unknown codes read as INTERNAL_ERROR
    /// (§7: "unknown or unsupported error codes ... MAY be treated as INTERNAL_ERROR").
    pub fn from_u32(code: u32) -> ErrorCode {
        use ErrorCode::*;
        match code {
            0x0 => NoError,
            0x1 => ProtocolError,
            0x3 => FlowControlError,
            0x4 => SettingsTimeout,
            0x5 => StreamClosed,
            0x6 => FrameSizeError,
            0x7 => RefusedStream,
            0x8 => Cancel,
            0x9 => CompressionError,
            0xa => ConnectError,
            0xb => EnhanceYourCalm,
            0xc => InadequateSecurity,
            0xd => Http11Required,
            _ => InternalError,
        }
    }
}

/// A violation found while reading frames: of the whole connection (GOAWAY) or of one stream
/// (RST_STREAM), as RFC 9113 §5.4 sorts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H2Error {
    /// The connection must end with GOAWAY carrying this code.
    Connection(ErrorCode),
    /// This stream must be reset with this code; the connection goes on.
    Stream(u32, ErrorCode),
}
