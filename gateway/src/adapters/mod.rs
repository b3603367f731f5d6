//! Adapters: the wire protocols sensors speak (CoAP over UDP and DTLS 1.2 in `coap`, the
//! line protocol in `serial`; the HTTP adapter's handler is served by the API server in
//! `crate::http::adapter`). An adapter translates wire <-> intake request and maps the one
//! refusal enum to its wire answer; it decides nothing itself: admission is `crate::intake`.

pub mod coap;
pub mod serial;
