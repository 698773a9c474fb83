//! `palisade.notify.v1.NotificationService`. Every RPC authorises first, validates, then
//! touches the store; errors leave through [`NotifierError`]'s code table.

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use palisade_contracts::{
    notify::v1::{notification_service_server::NotificationService, *},
    time::from_millis,
};
use secrecy::{ExposeSecret, SecretString};
use tonic::{Request, Response, Status};

use crate::{
    auth::{self, Scope},
    channels::{format, signing},
    engine::{Notifier, SECURITY_CONTACT_PHONE},
    error::{NotifierError, Result},
    store::{ChannelRecord, DeliveryFilter, DeliveryRow, NewDelivery},
    validate,
};

#[derive(Clone)]
pub struct NotificationApi {
    core: Arc<Notifier>,
}

impl std::fmt::Debug for NotificationApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotificationApi").finish_non_exhaustive()
    }
}

const MAX_PAGE: i32 = 500;

fn page_size(requested: i32) -> u32 {
    if requested <= 0 {
        100
    } else {
        requested.min(MAX_PAGE) as u32
    }
}

fn encode_token(last: &str) -> String {
    URL_SAFE_NO_PAD.encode(last)
}

fn decode_token(token: &str) -> Result<Option<String>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| NotifierError::invalid("page_token: malformed"))?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| NotifierError::invalid("page_token: malformed"))
}

fn channel_to_proto(c: &ChannelRecord) -> Channel {
    Channel {
        channel_id: c.channel_id.clone(),
        display_name: c.display_name.clone(),
        kind: c.kind,
        target: c.target.clone(),
        enabled: c.enabled,
        disabled_reason: c.disabled_reason.clone(),
        created_at: Some(from_millis(c.created_at)),
        active_secret_count: if c.kind == ChannelKind::Webhook as i32 {
            c.secret_count
        } else {
            0
        },
        language: c.language.clone(),
    }
}

fn delivery_to_proto(d: &DeliveryRow, attempts: &[crate::store::AttemptRecord]) -> Delivery {
    Delivery {
        delivery_id: d.delivery.delivery_id.clone(),
        event_id: d.delivery.event_id.clone(),
        event_kind: d.delivery.event_kind.clone(),
        fingerprint: d.delivery.fingerprint.clone(),
        channel_kind: d.delivery.channel_kind,
        channel_id: d.delivery.channel_id.clone(),
        recipient: d.delivery.recipient.clone(),
        language: d.delivery.language.clone(),
        status: d.status,
        attempts: attempts
            .iter()
            .map(|a| DeliveryAttempt {
                attempt: a.attempt,
                at: Some(from_millis(a.at)),
                http_status: a.http_status,
                error: a.error.clone(),
                duration_ms: a.duration_ms,
            })
            .collect(),
        created_at: Some(from_millis(d.delivery.created_at)),
        next_attempt_at: matches!(
            DeliveryStatus::try_from(d.status),
            Ok(DeliveryStatus::Planned | DeliveryStatus::Retrying)
        )
        .then(|| from_millis(d.delivery.next_attempt_at)),
    }
}

/// Which fields Partner Center would still ask for.
pub fn missing_security_contact_fields(c: &SecurityContact) -> Vec<String> {
    let mut missing = Vec::new();
    if c.first_name.trim().is_empty() {
        missing.push("first_name".to_owned());
    }
    // A group's name fits in the first-name field alone.
    if c.last_name.trim().is_empty() && !c.is_group {
        missing.push("last_name".to_owned());
    }
    if validate::email("email", &c.email).is_err() {
        missing.push("email".to_owned());
    }
    if validate::e164("phone", &c.phone).is_err() {
        missing.push("phone".to_owned());
    }
    missing
}

impl NotificationApi {
    pub fn new(core: Arc<Notifier>) -> Self {
        Self { core }
    }

    async fn authorize<T>(
        &self,
        request: &Request<T>,
        partner: &str,
        scope: Scope,
    ) -> std::result::Result<(), Status> {
        auth::authorize(request, partner, scope)
    }

    fn store(&self) -> &Arc<dyn crate::store::NotifyStore> {
        self.core.store()
    }

    async fn validate_channel_ids(
        &self,
        partner: &str,
        ids: &[String],
        allow_phone: bool,
    ) -> Result<()> {
        for id in ids {
            if allow_phone && id == SECURITY_CONTACT_PHONE {
                continue;
            }
            if self.store().get_channel(partner, id).await?.is_none() {
                return Err(NotifierError::invalid(format!(
                    "channel_ids: {id} does not exist"
                )));
            }
        }
        Ok(())
    }

    /// Checks a partner-supplied URL now, so an obviously internal address is refused at
    /// creation; the resolver checks again at every send, which is what really protects.
    async fn check_partner_url(&self, raw: &str) -> Result<()> {
        let policy = self.core.senders.ssrf();
        let url = policy.check_url(raw)?;
        if url.scheme() != "https" && !(policy.allow_loopback || policy.allow_private) {
            return Err(NotifierError::AddressRefused("url must use https".into()));
        }
        if let Some(url::Host::Domain(host)) = url.host() {
            if policy.refuses_name(host) {
                return Err(NotifierError::AddressRefused(format!(
                    "{host} is a loopback name"
                )));
            }
            let port = url.port_or_known_default().unwrap_or(443);
            if let Ok(addrs) = tokio::net::lookup_host((host, port)).await {
                let addrs: Vec<_> = addrs.collect();
                if !addrs.is_empty() && !addrs.iter().any(|a| policy.allows(a.ip())) {
                    return Err(NotifierError::AddressRefused(format!(
                        "{host} resolves only to non-public addresses"
                    )));
                }
            }
        }
        Ok(())
    }
}

type Rpc<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl NotificationService for NotificationApi {
    async fn set_security_contact(
        &self,
        request: Request<SetSecurityContactRequest>,
    ) -> Rpc<SetSecurityContactResponse> {
        let partner = request.get_ref().partner_tenant_id.clone();
        self.authorize(&request, &partner, Scope::NotifyAdmin)
            .await?;
        let mut c = request
            .into_inner()
            .contact
            .ok_or_else(|| NotifierError::invalid("contact: is required"))?;
        validate::required("contact.first_name", &c.first_name)?;
        if !c.is_group {
            validate::required("contact.last_name", &c.last_name)?;
        }
        validate::email("contact.email", &c.email)?;
        validate::e164("contact.phone", &c.phone)?;
        validate::language("contact.language", &c.language)?;
        let now = self.core.now();
        self.store().set_security_contact(&partner, &c, now).await?;
        self.core.invalidate(&partner);
        c.updated_at = Some(from_millis(now));
        Ok(Response::new(SetSecurityContactResponse {
            contact: Some(c),
        }))
    }

    async fn get_security_contact(
        &self,
        request: Request<GetSecurityContactRequest>,
    ) -> Rpc<GetSecurityContactResponse> {
        let partner = request.get_ref().partner_tenant_id.clone();
        self.authorize(&request, &partner, Scope::NotifyRead)
            .await?;
        let contact = self
            .store()
            .get_security_contact(&partner)
            .await?
            .ok_or(NotifierError::NotFound("security contact"))?;
        Ok(Response::new(GetSecurityContactResponse {
            contact: Some(contact),
        }))
    }

    async fn get_security_contact_status(
        &self,
        request: Request<GetSecurityContactStatusRequest>,
    ) -> Rpc<GetSecurityContactStatusResponse> {
        let partner = request.get_ref().partner_tenant_id.clone();
        self.authorize(&request, &partner, Scope::NotifyRead)
            .await?;
        let contact = self.store().get_security_contact(&partner).await?;
        let compliance = self.store().get_compliance_contact(&partner).await?;
        let missing = match &contact {
            Some(c) => missing_security_contact_fields(c),
            None => vec!["first_name", "last_name", "email", "phone"]
                .into_iter()
                .map(String::from)
                .collect(),
        };
        Ok(Response::new(GetSecurityContactStatusResponse {
            security_contact_present: contact.is_some(),
            security_contact_complete: contact.is_some() && missing.is_empty(),
            missing_fields: missing,
            compliance_contact_present: compliance.is_some(),
        }))
    }

    async fn set_compliance_contact(
        &self,
        request: Request<SetComplianceContactRequest>,
    ) -> Rpc<SetComplianceContactResponse> {
        let partner = request.get_ref().partner_tenant_id.clone();
        self.authorize(&request, &partner, Scope::NotifyAdmin)
            .await?;
        let c = request
            .into_inner()
            .contact
            .ok_or_else(|| NotifierError::invalid("contact: is required"))?;
        validate::required("contact.name", &c.name)?;
        validate::email("contact.email", &c.email)?;
        if !c.phone.is_empty() {
            validate::e164("contact.phone", &c.phone)?;
        }
        validate::language("contact.language", &c.language)?;
        self.store()
            .set_compliance_contact(&partner, &c, self.core.now())
            .await?;
        self.core.invalidate(&partner);
        Ok(Response::new(SetComplianceContactResponse {
            contact: Some(c),
        }))
    }

    async fn get_compliance_contact(
        &self,
        request: Request<GetComplianceContactRequest>,
    ) -> Rpc<GetComplianceContactResponse> {
        let partner = request.get_ref().partner_tenant_id.clone();
        self.authorize(&request, &partner, Scope::NotifyRead)
            .await?;
        let contact = self
            .store()
            .get_compliance_contact(&partner)
            .await?
            .ok_or(NotifierError::NotFound("compliance contact"))?;
        Ok(Response::new(GetComplianceContactResponse {
            contact: Some(contact),
        }))
    }

    async fn upsert_admin_agent(
        &self,
        request: Request<UpsertAdminAgentRequest>,
    ) -> Rpc<UpsertAdminAgentResponse> {
        let partner = request.get_ref().partner_tenant_id.clone();
        self.authorize(&request, &partner, Scope::NotifyAdmin)
            .await?;
        let a = request
            .into_inner()
            .agent
            .ok_or_else(|| NotifierError::invalid("agent: is required"))?;
        validate::required("agent.agent_id", &a.agent_id)?;
        validate::required("agent.display_name", &a.display_name)?;
        validate::email("agent.email", &a.email)?;
        validate::language("agent.language", &a.language)?;
        validate::time_zone("agent.time_zone", &a.time_zone)?;
        if !a.phone.is_empty() {
            validate::e164("agent.phone", &a.phone)?;
        }
        self.store()
            .upsert_admin_agent(&partner, &a, self.core.now())
            .await?;
        self.core.invalidate(&partner);
        Ok(Response::new(UpsertAdminAgentResponse { agent: Some(a) }))
    }

    async fn list_admin_agents(
        &self,
        request: Request<ListAdminAgentsRequest>,
    ) -> Rpc<ListAdminAgentsResponse> {
        let partner = request.get_ref().partner_tenant_id.clone();
        self.authorize(&request, &partner, Scope::NotifyRead)
            .await?;
        let r = request.into_inner();
        let size = page_size(r.page_size);
        let after = decode_token(&r.page_token)?;
        let agents = self
            .store()
            .list_admin_agents(&partner, after.as_deref(), size)
            .await?;
        let next = if agents.len() as u32 == size {
            agents
                .last()
                .map(|a| encode_token(&a.agent_id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListAdminAgentsResponse {
            agents,
            next_page_token: next,
        }))
    }

    async fn delete_admin_agent(
        &self,
        request: Request<DeleteAdminAgentRequest>,
    ) -> Rpc<DeleteAdminAgentResponse> {
        let partner = request.get_ref().partner_tenant_id.clone();
        self.authorize(&request, &partner, Scope::NotifyAdmin)
            .await?;
        if !self
            .store()
            .delete_admin_agent(&partner, &request.get_ref().agent_id)
            .await?
        {
            return Err(NotifierError::NotFound("admin agent").into());
        }
        self.core.invalidate(&partner);
        Ok(Response::new(DeleteAdminAgentResponse {}))
    }

    async fn create_channel(
        &self,
        request: Request<CreateChannelRequest>,
    ) -> Rpc<CreateChannelResponse> {
        let partner = request.get_ref().partner_tenant_id.clone();
        self.authorize(&request, &partner, Scope::NotifyAdmin)
            .await?;
        let r = request.into_inner();
        validate::required("display_name", &r.display_name)?;
        validate::language("language", &r.language)?;
        let kind = ChannelKind::try_from(r.kind).unwrap_or(ChannelKind::Unspecified);
        let mut generated = None;
        let secrets: Vec<SecretString> = match kind {
            ChannelKind::Unspecified => {
                return Err(NotifierError::invalid("kind: is required").into());
            }
            ChannelKind::Email => {
                validate::email("target", &r.target)?;
                Vec::new()
            }
            ChannelKind::Sms => {
                validate::e164("target", &r.target)?;
                Vec::new()
            }
            ChannelKind::Teams | ChannelKind::Slack => {
                self.check_partner_url(&r.target).await?;
                Vec::new()
            }
            ChannelKind::Webhook => {
                self.check_partner_url(&r.target).await?;
                if r.secret.is_empty() {
                    let s = signing::generate_secret();
                    generated = Some(s.expose_secret().to_owned());
                    vec![s]
                } else {
                    signing::decode_secret(&r.secret)?;
                    vec![SecretString::from(r.secret.clone())]
                }
            }
            ChannelKind::Pagerduty => {
                if !r.target.is_empty() {
                    return Err(
                        NotifierError::invalid("target: must be empty for pagerduty").into(),
                    );
                }
                // Integration keys are 32 characters of [a-zA-Z0-9].
                if r.secret.len() != 32 || !r.secret.chars().all(|c| c.is_ascii_alphanumeric()) {
                    return Err(NotifierError::invalid(
                        "secret: a pagerduty routing key is 32 letters and digits",
                    )
                    .into());
                }
                vec![SecretString::from(r.secret.clone())]
            }
        };
        let channel_id = format!("ch_{}", uuid::Uuid::now_v7().simple());
        let secret_sealed = if secrets.is_empty() {
            None
        } else {
            Some(
                self.core
                    .seal_secrets(&partner, &channel_id, &secrets)
                    .await?,
            )
        };
        let record = ChannelRecord {
            channel_id,
            partner_tenant_id: partner,
            display_name: r.display_name,
            kind: kind as i32,
            target: r.target,
            language: r.language,
            enabled: true,
            disabled_reason: String::new(),
            secret_sealed,
            secret_count: secrets.len() as u32,
            failing_since: None,
            created_at: self.core.now(),
        };
        self.store().insert_channel(&record).await?;
        self.core
            .invalidate_channel(&record.partner_tenant_id, &record.channel_id);
        Ok(Response::new(CreateChannelResponse {
            channel: Some(channel_to_proto(&record)),
            generated_secret: generated.unwrap_or_default(),
        }))
    }

    async fn list_channels(
        &self,
        request: Request<ListChannelsRequest>,
    ) -> Rpc<ListChannelsResponse> {
        let partner = request.get_ref().partner_tenant_id.clone();
        self.authorize(&request, &partner, Scope::NotifyRead)
            .await?;
        let r = request.into_inner();
        let size = page_size(r.page_size);
        let after = decode_token(&r.page_token)?;
        let rows = self
            .store()
            .list_channels(&partner, after.as_deref(), size)
            .await?;
        let next = if rows.len() as u32 == size {
            rows.last()
                .map(|c| encode_token(&c.channel_id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListChannelsResponse {
            channels: rows.iter().map(channel_to_proto).collect(),
            next_page_token: next,
        }))
    }

    async fn delete_channel(
        &self,
        request: Request<DeleteChannelRequest>,
    ) -> Rpc<DeleteChannelResponse> {
        let partner = request.get_ref().partner_tenant_id.clone();
        self.authorize(&request, &partner, Scope::NotifyAdmin)
            .await?;
        if !self
            .store()
            .delete_channel(&partner, &request.get_ref().channel_id)
            .await?
        {
            return Err(NotifierError::NotFound("channel").into());
        }
        self.core
            .invalidate_channel(&partner, &request.get_ref().channel_id);
        self.core.refresh_gauges().await;
        Ok(Response::new(DeleteChannelResponse {}))
    }

    async fn test_channel(&self, request: Request<TestChannelRequest>) -> Rpc<TestChannelResponse> {
        let partner = request.get_ref().partner_tenant_id.clone();
        self.authorize(&request, &partner, Scope::NotifyAdmin)
            .await?;
        let channel = self
            .store()
            .get_channel(&partner, &request.get_ref().channel_id)
            .await?
            .ok_or(NotifierError::NotFound("channel"))?;
        let settings = self.core.effective_settings(&partner).await?;
        let language = validate::pick_language(&channel.language, &settings.default_language);
        let rendered = self.core.templates.render(
            "test",
            language,
            serde_json::json!({"channel_name": channel.display_name}),
        )?;
        let now = self.core.now();
        let kind = crate::channels::kind_of(channel.kind);
        let msg = format::Message {
            partner_tenant_id: &partner,
            event_kind: "notification.test",
            rendered: &rendered,
            items: &[],
            ack_url: None,
            language,
            occurred_at: now,
        };
        let (subject, body) = format::format(kind, &msg);
        let row = DeliveryRow {
            delivery: NewDelivery {
                delivery_id: format!("test_{}", uuid::Uuid::now_v7().simple()),
                partner_tenant_id: partner.clone(),
                event_id: String::new(),
                event_kind: "notification.test".into(),
                fingerprint: String::new(),
                channel_kind: channel.kind,
                channel_id: channel.channel_id.clone(),
                recipient: format!("channel:{}", channel.channel_id),
                target: channel.target.clone(),
                language: language.to_owned(),
                subject,
                body,
                next_attempt_at: now,
                created_at: now,
            },
            status: DeliveryStatus::Sending as i32,
            attempts: 0,
            retry_base: 0,
            last_error: String::new(),
            updated_at: now,
        };
        let secrets = self.core.open_secrets(&channel).await?;
        let outcome = self.core.senders.send(&row, &secrets).await;
        Ok(Response::new(TestChannelResponse {
            success: outcome.success,
            detail: if outcome.success {
                "delivered".into()
            } else {
                outcome.detail
            },
            http_status: outcome.status,
        }))
    }

    async fn rotate_channel_secret(
        &self,
        request: Request<RotateChannelSecretRequest>,
    ) -> Rpc<RotateChannelSecretResponse> {
        let partner = request.get_ref().partner_tenant_id.clone();
        self.authorize(&request, &partner, Scope::NotifyAdmin)
            .await?;
        let r = request.into_inner();
        let channel = self
            .store()
            .get_channel(&partner, &r.channel_id)
            .await?
            .ok_or(NotifierError::NotFound("channel"))?;
        if channel.kind != ChannelKind::Webhook as i32 {
            return Err(NotifierError::FailedPrecondition(
                "only webhook channels have signing secrets".into(),
            )
            .into());
        }
        let hours = match r.previous_valid_hours {
            0 => 24,
            h if h <= 168 => h,
            _ => return Err(NotifierError::invalid("previous_valid_hours: at most 168").into()),
        };
        let (new, generated) = if r.new_secret.is_empty() {
            let s = signing::generate_secret();
            let shown = s.expose_secret().to_owned();
            (s, Some(shown))
        } else {
            signing::decode_secret(&r.new_secret)?;
            (SecretString::from(r.new_secret.clone()), None)
        };
        let count = self
            .core
            .rotate_secret(&channel, new, i64::from(hours) * 3_600_000)
            .await?;
        let mut proto = channel_to_proto(&channel);
        proto.active_secret_count = count;
        Ok(Response::new(RotateChannelSecretResponse {
            channel: Some(proto),
            generated_secret: generated.unwrap_or_default(),
        }))
    }

    async fn create_route(&self, request: Request<CreateRouteRequest>) -> Rpc<CreateRouteResponse> {
        let partner = request.get_ref().partner_tenant_id.clone();
        self.authorize(&request, &partner, Scope::NotifyAdmin)
            .await?;
        let mut route = request
            .into_inner()
            .route
            .ok_or_else(|| NotifierError::invalid("route: is required"))?;
        validate::required("route.display_name", &route.display_name)?;
        if route.recipients.is_empty() && route.channel_ids.is_empty() {
            return Err(
                NotifierError::invalid("route: name at least one recipient or channel").into(),
            );
        }
        if route
            .recipients
            .iter()
            .any(|r| Recipient::try_from(*r).map_or(true, |r| r == Recipient::Unspecified))
        {
            return Err(NotifierError::invalid("route.recipients: unknown recipient").into());
        }
        self.validate_channel_ids(&partner, &route.channel_ids, false)
            .await?;
        if route.mode == DeliveryMode::Unspecified as i32 {
            route.mode = DeliveryMode::Immediate as i32;
        }
        route.route_id = format!("rt_{}", uuid::Uuid::now_v7().simple());
        self.store()
            .insert_route(&partner, &route, self.core.now())
            .await?;
        self.core.invalidate(&partner);
        Ok(Response::new(CreateRouteResponse { route: Some(route) }))
    }

    async fn list_routes(&self, request: Request<ListRoutesRequest>) -> Rpc<ListRoutesResponse> {
        let partner = request.get_ref().partner_tenant_id.clone();
        self.authorize(&request, &partner, Scope::NotifyRead)
            .await?;
        let r = request.into_inner();
        let size = page_size(r.page_size) as usize;
        let after = decode_token(&r.page_token)?;
        // Routes are few per partner and evaluated in priority order, so they are read whole
        // and paged in that order.
        let all = self.store().list_routes(&partner).await?;
        let start = match &after {
            Some(id) => all
                .iter()
                .position(|x| &x.route_id == id)
                .map_or(all.len(), |p| p + 1),
            None => 0,
        };
        let page: Vec<Route> = all.iter().skip(start).take(size).cloned().collect();
        let next = if start + page.len() < all.len() {
            page.last()
                .map(|x| encode_token(&x.route_id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListRoutesResponse {
            routes: page,
            next_page_token: next,
        }))
    }

    async fn delete_route(&self, request: Request<DeleteRouteRequest>) -> Rpc<DeleteRouteResponse> {
        let partner = request.get_ref().partner_tenant_id.clone();
        self.authorize(&request, &partner, Scope::NotifyAdmin)
            .await?;
        self.core.invalidate(&partner);
        if !self
            .store()
            .delete_route(&partner, &request.get_ref().route_id)
            .await?
        {
            return Err(NotifierError::NotFound("route").into());
        }
        Ok(Response::new(DeleteRouteResponse {}))
    }

    async fn set_partner_settings(
        &self,
        request: Request<SetPartnerSettingsRequest>,
    ) -> Rpc<SetPartnerSettingsResponse> {
        let partner = request.get_ref().partner_tenant_id.clone();
        self.authorize(&request, &partner, Scope::NotifyAdmin)
            .await?;
        let s = request
            .into_inner()
            .settings
            .ok_or_else(|| NotifierError::invalid("settings: is required"))?;
        validate::time_zone("settings.time_zone", &s.time_zone)?;
        validate::language("settings.default_language", &s.default_language)?;
        if s.digest_hour > 23 {
            return Err(NotifierError::invalid("settings.digest_hour: must be 0 to 23").into());
        }
        if s.repeat_interval_seconds != 0 && s.repeat_interval_seconds < s.group_interval_seconds {
            return Err(NotifierError::invalid(
                "settings.repeat_interval_seconds: must not be shorter than group_interval_seconds",
            )
            .into());
        }
        for (i, step) in s.escalation.iter().enumerate() {
            if step.after_minutes == 0 {
                return Err(NotifierError::invalid(format!(
                    "settings.escalation[{i}].after_minutes: must be positive"
                ))
                .into());
            }
            self.validate_channel_ids(&partner, &step.channel_ids, true)
                .await?;
        }
        self.store()
            .set_settings(&partner, &s, self.core.now())
            .await?;
        self.core.invalidate(&partner);
        Ok(Response::new(SetPartnerSettingsResponse {
            settings: Some(s),
        }))
    }

    async fn get_partner_settings(
        &self,
        request: Request<GetPartnerSettingsRequest>,
    ) -> Rpc<GetPartnerSettingsResponse> {
        let partner = request.get_ref().partner_tenant_id.clone();
        self.authorize(&request, &partner, Scope::NotifyRead)
            .await?;
        let s = self.core.effective_settings(&partner).await?;
        Ok(Response::new(GetPartnerSettingsResponse {
            settings: Some(s),
        }))
    }

    async fn acknowledge_alert(
        &self,
        request: Request<AcknowledgeAlertRequest>,
    ) -> Rpc<AcknowledgeAlertResponse> {
        let partner = request.get_ref().partner_tenant_id.clone();
        self.authorize(&request, &partner, Scope::NotifyAdmin)
            .await?;
        let r = request.into_inner();
        validate::required("fingerprint", &r.fingerprint)?;
        let now = self.core.now();
        let cancelled = self
            .store()
            .acknowledge(&partner, &r.fingerprint, &r.note, now)
            .await?;
        Ok(Response::new(AcknowledgeAlertResponse {
            acknowledged_at: Some(from_millis(now)),
            cancelled_escalation_steps: cancelled,
        }))
    }

    async fn snooze_alert(&self, request: Request<SnoozeAlertRequest>) -> Rpc<SnoozeAlertResponse> {
        let partner = request.get_ref().partner_tenant_id.clone();
        self.authorize(&request, &partner, Scope::NotifyAdmin)
            .await?;
        let r = request.into_inner();
        validate::required("fingerprint", &r.fingerprint)?;
        if !(7..=90).contains(&r.days) {
            return Err(NotifierError::invalid("days: must be 7 to 90").into());
        }
        let until = self.core.now() + i64::from(r.days) * 86_400_000;
        self.store().snooze(&partner, &r.fingerprint, until).await?;
        self.core.invalidate(&partner);
        Ok(Response::new(SnoozeAlertResponse {
            until: Some(from_millis(until)),
        }))
    }

    async fn list_deliveries(
        &self,
        request: Request<ListDeliveriesRequest>,
    ) -> Rpc<ListDeliveriesResponse> {
        let partner = request.get_ref().partner_tenant_id.clone();
        self.authorize(&request, &partner, Scope::NotifyRead)
            .await?;
        let r = request.into_inner();
        let size = page_size(r.page_size);
        let filter = DeliveryFilter {
            statuses: r.statuses.clone(),
            fingerprint: Some(r.fingerprint.clone()).filter(|s| !s.is_empty()),
            channel_id: Some(r.channel_id.clone()).filter(|s| !s.is_empty()),
            after: decode_token(&r.page_token)?,
            limit: size,
        };
        let rows = self.store().list_deliveries(&partner, &filter).await?;
        let next = if rows.len() as u32 == size {
            rows.last()
                .map(|(d, _)| encode_token(&d.delivery.delivery_id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListDeliveriesResponse {
            deliveries: rows.iter().map(|(d, a)| delivery_to_proto(d, a)).collect(),
            next_page_token: next,
        }))
    }

    async fn redrive_dead_letters(
        &self,
        request: Request<RedriveDeadLettersRequest>,
    ) -> Rpc<RedriveDeadLettersResponse> {
        let partner = request.get_ref().partner_tenant_id.clone();
        self.authorize(&request, &partner, Scope::NotifyAdmin)
            .await?;
        let r = request.into_inner();
        let redriven = self
            .store()
            .redrive(&partner, &r.delivery_ids, self.core.now())
            .await?;
        self.core.wake_dispatch.notify_one();
        self.core.refresh_gauges().await;
        Ok(Response::new(RedriveDeadLettersResponse { redriven }))
    }
}
