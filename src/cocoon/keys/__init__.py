"""The key service role (`cocoon keys`): keys derived for attested peers by image, role and name."""
