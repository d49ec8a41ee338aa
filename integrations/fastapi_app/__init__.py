"""The tutorial app, done right: cached reads, invalidating writes, response models."""
