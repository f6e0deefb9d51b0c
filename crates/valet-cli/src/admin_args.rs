//! The arguments of `valet client …` and `valet user …`.

use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub(crate) enum ClientCommand {
    /// Register a client. Prints its id and, for confidential clients, its secret (shown
    /// once: only a SHA-256 digest is kept).
    Create {
        /// Display name shown on the consent page.
        #[arg(long)]
        name: String,
        /// A public client (native or browser app): no secret, PKCE required.
        #[arg(long)]
        public: bool,
        #[command(flatten)]
        options: ClientOptions,
        /// Print one JSON object {"client_id": ..., "client_secret": ...}.
        #[arg(long)]
        json: bool,
    },
    /// List registered clients.
    List {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Disable a client and revoke every grant it holds.
    Disable {
        #[arg(value_name = "CLIENT_ID")]
        client_id: String,
    },
    /// Change what a client registered. Options not given keep their value; a list
    /// option given (repeatable) replaces the whole list. The rules of `create` hold.
    Update {
        #[arg(value_name = "CLIENT_ID")]
        client_id: String,
        /// A new display name.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        options: ClientOptions,
    },
    /// Let a disabled client authenticate again (its revoked grants stay revoked).
    Enable {
        #[arg(value_name = "CLIENT_ID")]
        client_id: String,
    },
    /// Give a confidential client a new secret (printed once). The current secret keeps
    /// working for --overlap seconds, so the client's deployments can switch over.
    RotateSecret {
        #[arg(value_name = "CLIENT_ID")]
        client_id: String,
        /// How long the current secret keeps working, in seconds (0: it stops now).
        #[arg(long, default_value_t = 86_400,
              value_parser = clap::value_parser!(u32).range(0..=2_592_000))]
        overlap: u32,
        /// Print one JSON object {"client_id", "client_secret", "previous_valid_until"}.
        #[arg(long)]
        json: bool,
    },
    /// Delete a client for good: it never authenticates again, its id is never reused,
    /// and every grant it holds is revoked.
    Delete {
        #[arg(value_name = "CLIENT_ID")]
        client_id: String,
    },
}

/// What a client registers, beside its name and type (`client create` and `update`).
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct ClientOptions {
    /// A redirect URI (https, or http on a loopback host). Repeat for several.
    #[arg(long = "redirect-uri", value_name = "URI")]
    pub(crate) redirect_uris: Vec<String>,
    /// authorization_code, refresh_token or client_credentials. Repeat for several.
    /// Default: authorization_code + refresh_token with a redirect URI,
    /// client_credentials without.
    #[arg(long = "grant-type", value_name = "GRANT_TYPE")]
    pub(crate) grant_types: Vec<String>,
    /// A scope the client may be granted. Repeat for several; at least one.
    #[arg(long = "scope", value_name = "SCOPE")]
    pub(crate) scopes: Vec<String>,
    /// How the client's id_tokens are signed: RS256 (default), ES256 or EdDSA.
    #[arg(long, value_name = "ALG")]
    pub(crate) id_token_signed_response_alg: Option<String>,
    /// Where RP-Initiated Logout may return the user (https, or http on a loopback
    /// host; matched exactly). Repeat for several.
    #[arg(long = "post-logout-redirect-uri", value_name = "URI")]
    pub(crate) post_logout_redirect_uris: Vec<String>,
    /// What its access tokens are: opaque (default; resource services validate them
    /// from the NATS stream or /introspect) or jwt (RFC 9068, verifiable with the JWKS).
    #[arg(long, value_name = "FORMAT")]
    pub(crate) access_token_format: Option<String>,
    /// How its JWT access tokens are signed: RS256 (default), ES256 or EdDSA.
    #[arg(long, value_name = "ALG")]
    pub(crate) access_token_signed_response_alg: Option<String>,
    /// Where Valet POSTs a logout token when a session the client took part in ends,
    /// the user is disabled or removes the app (OpenID Connect Back-Channel Logout;
    /// https, or http on a loopback host).
    #[arg(long, value_name = "URI")]
    pub(crate) backchannel_logout_uri: Option<String>,
    /// The client needs `sid` in its logout tokens (backchannel_logout_session_required).
    #[arg(long, requires = "backchannel_logout_uri")]
    pub(crate) backchannel_logout_session_required: bool,
}

/// A user's profile claims, served to apps granted `profile` or `email`.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct ProfileArgs {
    /// The person's name (the `name` claim).
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Their email address (the `email` claim).
    #[arg(long)]
    pub(crate) email: Option<String>,
    /// Whether you vouch for the email address (`email_verified`): true or false.
    #[arg(long, value_name = "BOOL")]
    pub(crate) email_verified: Option<bool>,
}

impl ProfileArgs {
    pub(crate) fn is_empty(&self) -> bool {
        self.name.is_none() && self.email.is_none() && self.email_verified.is_none()
    }
}

#[derive(Subcommand, Debug)]
pub(crate) enum UserCommand {
    /// Create a user; the password is read from standard input (one trailing newline is
    /// stripped) and stored as an argon2id hash, outside the event log.
    Create {
        #[arg(long)]
        username: String,
        /// Read the password from standard input (the only way: never on the command line).
        #[arg(long = "password-stdin", required = true)]
        password_stdin: bool,
        #[command(flatten)]
        profile: ProfileArgs,
    },
    /// Change a user's profile claims (what apps see through OpenID Connect); options
    /// not given keep their value.
    Update {
        #[arg(value_name = "USERNAME")]
        username: String,
        #[command(flatten)]
        profile: ProfileArgs,
    },
    /// Disable a user and revoke every grant made on their behalf.
    Disable {
        #[arg(value_name = "USERNAME")]
        username: String,
    },
    /// Let a disabled user sign in again (their revoked grants and ended sessions stay so).
    Enable {
        #[arg(value_name = "USERNAME")]
        username: String,
    },
    /// List the users.
    List {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// One user: id, state, profile, sessions that stand, apps holding grants.
    Show {
        #[arg(value_name = "USERNAME")]
        username: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Give a user a new password, read from standard input (one trailing newline is
    /// stripped): every sign-in session ends and, unless --keep-grants, every grant made
    /// on their behalf is revoked.
    Password {
        #[arg(value_name = "USERNAME")]
        username: String,
        /// Read the password from standard input (the only way: never on the command line).
        #[arg(long = "password-stdin", required = true)]
        password_stdin: bool,
        /// Leave the apps' grants in place (only the sessions end).
        #[arg(long)]
        keep_grants: bool,
    },
    /// Sign a user out everywhere: every sign-in session begun until now ends (their
    /// apps' grants stay; see revoke-grants).
    Logout {
        #[arg(value_name = "USERNAME")]
        username: String,
    },
    /// List a user's sign-in sessions, newest first: when each began, was last used and
    /// ends, the apps it signed in to, and how it ended.
    Sessions {
        #[arg(value_name = "USERNAME")]
        username: String,
        /// Only sessions that still stand.
        #[arg(long)]
        active: bool,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Revoke every grant made on behalf of a user (or only those of one client), without
    /// disabling the user: the apps' tokens stop working at once, everywhere.
    RevokeGrants {
        #[arg(value_name = "USERNAME")]
        username: String,
        /// Only the grants of this client.
        #[arg(long = "client", value_name = "CLIENT_ID")]
        client: Option<String>,
    },
}
