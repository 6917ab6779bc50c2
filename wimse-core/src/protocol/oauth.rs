//! The OAuth identifiers the identity server and its clients exchange (RFC 8693 token
//! exchange, RFC 7523 JWT bearer grants and client assertions), defined once for both sides.

/// RFC 8693 `grant_type` of a token exchange.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 7523 `grant_type` of a JWT bearer assertion.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// RFC 7523 `client_assertion_type` of a JWT client assertion.
pub const JWT_BEARER_CLIENT_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// RFC 8693 token type of OAuth access tokens.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// RFC 8693 token type of OpenID Connect ID tokens.
pub const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
/// RFC 8693 token type of JWTs (JWT-SVIDs, platform tokens; and of an issued WIT).
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
