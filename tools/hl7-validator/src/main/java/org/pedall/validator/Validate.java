package org.pedall.validator;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.DefaultProfileValidationSupport;
import ca.uhn.fhir.parser.IParser;
import ca.uhn.fhir.validation.FhirValidator;
import ca.uhn.fhir.validation.SingleValidationMessage;
import ca.uhn.fhir.validation.ValidationResult;
import org.hl7.fhir.common.hapi.validation.support.CommonCodeSystemsTerminologyService;
import org.hl7.fhir.common.hapi.validation.support.InMemoryTerminologyServerValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.PrePopulatedValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.SnapshotGeneratingValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.ValidationSupportChain;
import org.hl7.fhir.common.hapi.validation.validator.FhirInstanceValidator;
import org.hl7.fhir.instance.model.api.IBaseResource;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Stream;

/**
 * Validates every *.json file of a folder (a resource or a Bundle each) against FHIR R4 with the
 * HL7 validator (InstanceValidator through HAPI's FhirInstanceValidator): the R4 core definitions,
 * FHIRPath invariants and bindings it can check offline, plus the StructureDefinitions, CodeSystems
 * and ValueSets of a profiles folder (differentials get their snapshots generated).
 * Usage: Validate PROFILES_DIR FILES_DIR. Prints one JSON line per message:
 * {"file", "severity", "location", "messageId", "message"}; then {"files": n}.
 */
public final class Validate {
  private Validate() {}

  public static void main(String[] args) throws IOException {
    FhirContext ctx = FhirContext.forR4Cached();
    IParser parser = ctx.newJsonParser();
    PrePopulatedValidationSupport ours = new PrePopulatedValidationSupport(ctx);
    try (Stream<Path> files = Files.list(Path.of(args[0]))) {
      for (Path p : files.filter(f -> f.getFileName().toString().matches("(StructureDefinition|CodeSystem|ValueSet)-.*\\.json"))
          .sorted().toList()) {
        String text = Files.readString(p, StandardCharsets.UTF_8);
        IBaseResource r = parser.parseResource(text);
        String type = r.fhirType();
        if (type.equals("StructureDefinition") || type.equals("CodeSystem") || type.equals("ValueSet")) {
          ours.addResource(r);
        }
      }
    }
    ValidationSupportChain chain = new ValidationSupportChain(
        new DefaultProfileValidationSupport(ctx), ours, new SnapshotGeneratingValidationSupport(ctx),
        new InMemoryTerminologyServerValidationSupport(ctx), new CommonCodeSystemsTerminologyService(ctx));
    FhirValidator validator = ctx.newValidator();
    FhirInstanceValidator module = new FhirInstanceValidator(chain);
    module.setAnyExtensionsAllowed(true);
    validator.registerValidatorModule(module);
    int n = 0;
    try (Stream<Path> files = Files.list(Path.of(args[1]))) {
      List<Path> all = files.filter(f -> f.toString().endsWith(".json")).sorted().toList();
      for (Path p : all) {
        n++;
        ValidationResult result = validator.validateWithResult(Files.readString(p, StandardCharsets.UTF_8));
        for (SingleValidationMessage m : result.getMessages()) {
          System.out.println("{\"file\":" + q(p.getFileName().toString()) + ",\"severity\":" + q(m.getSeverity().getCode())
              + ",\"location\":" + q(m.getLocationString()) + ",\"messageId\":" + q(m.getMessageId())
              + ",\"message\":" + q(m.getMessage()) + "}");
        }
      }
    }
    System.out.println("{\"files\":" + n + "}");
  }

  private static String q(String s) {
    if (s == null) return "null";
    StringBuilder b = new StringBuilder("\"");
    for (char c : s.toCharArray()) {
      if (c == '"' || c == '\\') b.append('\\').append(c);
      else if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
      else b.append(c);
    }
    return b.append('"').toString();
  }
}
